/**
 * Open a RemoteRegion on a sharer named by a grant's endpoints, with every
 * byte of the connection counted (the copy reports what crossed the
 * orchestrator). Transports are opened on first use and kept for reconnects;
 * QUIC endpoints first, as mounts do (crypto/endpoint.ts `dialOrder`).
 */
import { QuicmapError } from '../../base/errors.ts';
import { dialOrder, endpointText, type Endpoint, type TransportName } from '../../crypto/endpoint.ts';
import type { Identity } from '../../crypto/identity.ts';
import type { Connection, Transport } from '../../transports/transport.ts';
import { meterConnection, type Meter } from '../node/metered.ts';
import { RemoteRegion, type RemoteRegionOptions } from '../remote/region.ts';
import { openTransport } from '../transports.ts';

export class PeerDialer {
  private readonly identity: Identity;
  private readonly override: Transport | undefined;
  private readonly opened = new Map<TransportName, Promise<Transport>>();

  /** `override`: dial every endpoint with this transport (tests: the loopback transport). */
  constructor(identity: Identity, override?: Transport) {
    this.identity = identity;
    this.override = override;
  }

  private transport(name: TransportName): Promise<Transport> {
    if (this.override) return Promise.resolve(this.override);
    let t = this.opened.get(name);
    if (!t) this.opened.set(name, (t = openTransport(name, this.identity)));
    return t;
  }

  /** A connect function for RemoteRegion: the endpoints in dial order, starting with the last that worked. */
  connector(endpoints: readonly Endpoint[], key: Uint8Array, meters: readonly Meter[] = [], timeoutMs = 5_000): () => Promise<Connection> {
    const order = dialOrder([...endpoints]);
    if (order.length === 0) throw new QuicmapError('EINVAL', 'the grant names no endpoint to reach its sharer');
    let next = 0;
    return async () => {
      const failed: string[] = [];
      let last: unknown;
      for (let i = 0; i < order.length; i++) {
        const idx = (next + i) % order.length;
        const ep = order[idx]!;
        try {
          const conn = await (await this.transport(ep.transport)).dial(ep.address, key, { timeoutMs });
          next = idx;
          return meters.length > 0 ? meterConnection(conn, meters) : conn;
        } catch (e) {
          last = e;
          if (e instanceof QuicmapError && e.code === 'EACCES') throw e;
          failed.push(`${endpointText(ep)}: ${(e as Error).message}`);
        }
      }
      throw new QuicmapError(last instanceof QuicmapError ? last.code : 'EIO', `cannot reach ${failed.join('; ')}`);
    };
  }

  async open(o: { endpoints: readonly Endpoint[]; sharer: Uint8Array; regionId: Uint8Array; grant: Uint8Array; readOnly: boolean; meters?: readonly Meter[]; agent: string; log?: (m: string) => void } & Partial<Pick<RemoteRegionOptions, 'requestTimeoutMs' | 'livenessMs' | 'waitForLinkMs' | 'backoff'>>): Promise<RemoteRegion> {
    const { endpoints, meters, readOnly, ...rest } = o;
    return RemoteRegion.open({ ...rest, connect: this.connector(endpoints, o.sharer, meters), readOnlyGrant: readOnly });
  }

  async close(): Promise<void> {
    if (this.override) return;
    for (const t of this.opened.values()) await t.then((x) => x.close(), () => {}).catch(() => {});
    this.opened.clear();
  }
}
