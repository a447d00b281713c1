/**
 * The demo's swarm step: a private DHT and a relay on loopback; node A
 * shares with a ticket that holds no address, its direct endpoint hidden,
 * so node B finds it through the DHT and reaches it through the relay;
 * then A's endpoint appears in its record and B moves to the direct path.
 */
import type { TransportName } from '../crypto/endpoint.ts';
import { randomBytes } from 'node:crypto';
import { generateIdentity } from '../crypto/identity.ts';
import { parseTicket } from '../crypto/ticket.ts';
import { MemoryBackend } from '../engine/backends/memory.ts';
import { formatSize } from '../base/size.ts';
import { DhtClient } from '../p2p/dht/client.ts';
import { QuicmapNode } from '../p2p/node/node.ts';
import { RelayServer } from '../p2p/relay/server.ts';

export interface SwarmStepResult {
  ok: boolean;
  detail: string;
}

export async function swarmStep(transport: TransportName): Promise<SwarmStepResult> {
  const cleanups: Array<() => Promise<void>> = [];
  try {
    const boot = await DhtClient.open({ bootstrap: 'none', queryTimeoutMs: 250 });
    cleanups.push(() => boot.destroy());
    const relay = await RelayServer.start({ identity: await generateIdentity(), listen: '127.0.0.1:0' });
    cleanups.push(() => relay.close());
    const node = async (relays: string[]) => {
      const n = await QuicmapNode.open({ identity: await generateIdentity(), dht: { bootstrap: [boot.address], queryTimeoutMs: 250 }, relays, upgradeIntervalMs: 300 });
      cleanups.push(() => n.close());
      return n;
    };
    const a = await node([relay.relayAddress]);
    const b = await node([]);
    // 127.0.0.1:9 (discard) answers nothing: B's direct dials fail, the relay is the way in.
    const share = await a.share({ store: new MemoryBackend(8 << 20), listen: '127.0.0.1:0', transport, advertise: [] });
    await share.publisher!.update({ ...share.record!, endpoints: [{ transport, address: '127.0.0.1:9' }] });
    const ticket = await parseTicket(share.ticket);
    const m = await b.mount({ ticket: share.ticket, directTimeoutMs: 500 });
    const data = randomBytes(1 << 20);
    await m.mounted.region.writeAt(data, 0);
    const back = new Uint8Array(data.length);
    await m.mounted.region.readAt(back, 0);
    const relayedOk = m.dialer.path?.kind === 'relay' && Buffer.from(back).equals(data);
    const relayed = relay.stats.bytesRelayed;
    await share.publisher!.update({ ...share.record!, endpoints: [{ transport, address: share.shared.address }] });
    for (let i = 0; i < 100 && m.dialer.path?.kind !== 'direct'; i++) await new Promise((r) => setTimeout(r, 50));
    await m.mounted.region.readAt(back, 0);
    const directOk = m.dialer.path?.kind === 'direct' && Buffer.from(back).equals(data);
    return {
      ok: ticket.claims.endpoints.length === 0 && relayedOk && directOk,
      detail: `ticket without addresses (${share.ticket.length} chars); B found A in the DHT (seq ${share.publisher!.currentSeq}), wrote and read ${formatSize(data.length)} through relay ${relay.address} (${formatSize(relayed)} relayed, end-to-end encrypted), then moved to ${m.dialer.path?.kind ?? 'no'} path ${m.dialer.path?.address ?? ''}${directOk ? ' with the data intact' : ' (FAILED)'}`,
    };
  } catch (e) {
    return { ok: false, detail: (e as Error).message };
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  }
}
