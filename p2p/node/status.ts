/**
 * What `quicmap status` shows: the node's status as JSON (NodeStatus, the
 * control socket's answer) and as text for a terminal.
 */
export interface NodeStatus {
  id: string;
  role: string;
  pid: number;
  uptimeMs: number;
  control: string | null;
  dht: { address: string; nodes: number } | null;
  regions: Array<{
    regionId: string;
    address: string;
    transport: string;
    relays: Array<{ relay: string; expiresAt: number }>;
    sessions: number;
    bytesRead: number;
    bytesWritten: number;
    /** Write requests applied to the store (each once, however often sent: resumable sessions). */
    writesApplied: number;
    /** Sessions taken back by a new link; resumes refused (a new session given); requests dropped as duplicates. */
    resumes: number;
    resumesRefused: number;
    duplicates: number;
    /** Sessions kept for a resume now (live or suspended); sessions their clients ended with a goodbye (freed at once). */
    sessionsKept: number;
    goodbyes: number;
    sent: number;
    received: number;
    dht: { seq: number; published: number; lastError: string | null } | null;
  }>;
  mounts: Array<{
    regionId: string;
    sharer: string;
    connected: boolean;
    path: string;
    upgrades: number;
    /** Outcome of the last hole punch ("succeeded over quic (...)", "succeeded over tcp (...)", "failed, staying on the relay: quic: ...; tcp: ..."), null if none tried. */
    punch: string | null;
    requests: number;
    bytesRead: number;
    bytesWritten: number;
    /** Write requests issued (the sharer applies each once). */
    writes: number;
    /** Links lost; sessions resumed after it; not resumed (new session); requests sent again; requests failed with an unknown outcome. */
    linkFailures: number;
    resumes: number;
    resumesRefused: number;
    resent: number;
    lost: number;
    sent: number;
    received: number;
  }>;
  peers: Array<{
    id: string;
    /** The path in use, as text ("direct tcp://…", "relay RELAY@…", "… (hole punched)"; "none" before any). */
    path: string;
    /** The kind of path in use; null before any. */
    via: 'direct' | 'relayed' | 'punched' | null;
    transport: string | null;
    address: string | null;
    /** Live RTT of the connection when it measures one, else its dial time (ms). */
    rttMs: number | null;
    lastSeen: string | null;
    sent: number;
    received: number;
    /** The same bytes split by the kind of path they took (a peer that moved from a relay to a punched path has both). */
    bytes: Record<'direct' | 'relayed' | 'punched', { sent: number; received: number }>;
    history: Array<{ at: string; from: string; to: string }>;
  }>;
  operations: Array<{ name: string; elapsedMs: number; progress: string | null }>;
  [section: string]: unknown;
}

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

export function formatStatus(s: NodeStatus): string {
  const out: string[] = [];
  out.push(`${s.role} ${s.id} (pid ${s.pid}, up ${Math.round(s.uptimeMs / 1000)} s)`);
  if (s.dht) out.push(`dht: ${s.dht.address}, ${s.dht.nodes} nodes known`);
  if (s.regions.length) out.push('regions:');
  for (const r of s.regions) {
    out.push(`  ${r.regionId} on ${r.transport}://${r.address}: ${r.sessions} sessions, read ${bytes(r.bytesRead)}, written ${bytes(r.bytesWritten)} (sent ${bytes(r.sent)}, received ${bytes(r.received)})${r.resumes || r.resumesRefused ? `, ${r.resumes} sessions resumed, ${r.resumesRefused} resumes refused` : ''}`);
    for (const x of r.relays) out.push(`    relay ${x.relay}: ${x.expiresAt ? `reserved until ${new Date(x.expiresAt).toISOString()}` : 'not reserved (retrying)'}`);
    if (r.dht) out.push(`    dht record seq ${r.dht.seq}, published ${r.dht.published}×${r.dht.lastError ? `, last error: ${r.dht.lastError}` : ''}`);
  }
  if (s.mounts.length) out.push('mounts:');
  for (const m of s.mounts) {
    out.push(`  ${m.regionId} from ${m.sharer.slice(0, 12)}: ${m.connected ? 'connected' : 'disconnected'}, path ${m.path}${m.upgrades ? ` (${m.upgrades} upgrades)` : ''}${m.punch ? `, hole punch ${m.punch}` : ''}, ${m.requests} requests, read ${bytes(m.bytesRead)}, written ${bytes(m.bytesWritten)}${m.linkFailures ? `, ${m.linkFailures} links lost, ${m.resumes} resumed, ${m.lost} requests lost` : ''}`);
  }
  if (s.peers.length) out.push('peers:');
  for (const p of s.peers) {
    const split = Object.entries(p.bytes ?? {}).filter(([, b]) => b.sent + b.received > 0);
    const perPath = split.length > 1 ? ` (${split.map(([via, b]) => `${via} ${bytes(b.sent)} / ${bytes(b.received)}`).join(', ')})` : '';
    out.push(`  ${p.id.slice(0, 12)}  ${p.path}${p.rttMs !== null ? `, rtt ~${p.rttMs} ms` : ''}, sent ${bytes(p.sent)}, received ${bytes(p.received)}${perPath}${p.lastSeen ? `, last seen ${p.lastSeen}` : ''}`);
    for (const h of p.history.slice(1)) out.push(`    ${h.at}: ${h.from} -> ${h.to}`);
  }
  if (s.operations.length) out.push('in progress:');
  for (const op of s.operations) out.push(`  ${op.name} (${Math.round(op.elapsedMs / 100) / 10} s${op.progress ? `, ${op.progress}` : ''})`);
  for (const [k, v] of Object.entries(s)) {
    if (['id', 'role', 'pid', 'uptimeMs', 'control', 'dht', 'regions', 'mounts', 'peers', 'operations'].includes(k)) continue;
    out.push(`${k}: ${JSON.stringify(v)}`);
  }
  return `${out.join('\n')}\n`;
}
