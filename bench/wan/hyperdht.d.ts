// The little of hyperdht 6 (no types of its own) that the WAN lab's
// Hyperswarm anchor uses (hyperswarm.ts).
declare module 'hyperdht' {
  import type { EventEmitter } from 'node:events';

  export interface HyperDhtSocket extends EventEmitter {
    write(data: Uint8Array): boolean;
    end(): void;
    destroy(err?: Error): void;
    readonly destroyed: boolean;
  }

  export interface HyperDhtServer {
    listen(keyPair: { publicKey: Uint8Array; secretKey: Uint8Array }): Promise<void>;
    close(): Promise<void>;
  }

  export interface HyperDhtOptions {
    bootstrap: Array<{ host: string; port: number }>;
    port?: number;
    host?: string;
    ephemeral?: boolean;
    firewalled?: boolean;
    anyPort?: boolean;
  }

  export interface HyperDhtNode {
    ready(): Promise<void>;
    fullyBootstrapped(): Promise<void>;
    createServer(onconnection: (sock: HyperDhtSocket) => void): HyperDhtServer;
    connect(publicKey: Uint8Array): HyperDhtSocket;
    destroy(): Promise<void>;
  }

  interface HyperDhtClass {
    new (opts: HyperDhtOptions): HyperDhtNode;
    keyPair(seed?: Uint8Array): { publicKey: Uint8Array; secretKey: Uint8Array };
  }

  const HyperDHT: HyperDhtClass;
  export default HyperDHT;
}
