/** The part of bittorrent-dht 11 (untyped, ESM) that p2p/dht uses. */
declare module 'bittorrent-dht' {
  import { EventEmitter } from 'node:events';
  export interface DhtPeer {
    host: string;
    port: number;
  }
  export interface MutableRecord {
    v: Buffer;
    k: Buffer;
    sig: Buffer;
    seq: number;
    salt?: Buffer;
  }
  export interface DhtOptions {
    bootstrap?: false | string[];
    host?: string | false;
    timeout?: number;
    verify?: (signature: Buffer, message: Buffer, publicKey: Buffer) => boolean;
    maxValues?: number;
    maxPeers?: number;
    maxTables?: number;
  }
  export default class DHT extends EventEmitter {
    constructor(opts?: DhtOptions);
    listening: boolean;
    destroyed: boolean;
    nodeId: Buffer;
    listen(port: number, host: string, cb?: () => void): void;
    address(): { address: string; port: number; family: string };
    announce(infoHash: Buffer, port: number, cb: (err: Error | null) => void): void;
    lookup(infoHash: Buffer, cb: (err: Error | null, found: number) => void): () => void;
    put(opts: { k: Buffer; v: Buffer; seq: number; salt?: Buffer; sign: (msg: Buffer) => Buffer; cas?: number }, cb: (err: Error | null, hash: Buffer, n: number) => void): Buffer;
    get(hash: Buffer, opts: { salt?: Buffer; verify?: DhtOptions['verify']; cache?: boolean }, cb: (err: Error | null, res: MutableRecord | null) => void): void;
    destroy(cb?: () => void): void;
    toJSON(): { nodes: DhtPeer[] };
    _values: { set(key: string, v: unknown): void };
  }
}
