/**
 * Socket buffer sizes for a UDP socket this process owns but did not open
 * through Node: the QUIC listener's socket, which the native layer of
 * @chainsafe/libp2p-quic creates and leaves at the OS default (its
 * `receiveBufferSize`/`sendBufferSize` apply to client sockets only).
 * Measured: 4 MiB on the server removes receive drops (+6–18 % throughput,
 * FACTS.md).
 *
 * How: find the socket's fd by its local port (/proc/self/net/udp{,6} gives
 * the inode, /proc/self/fd the fd), adopt that fd in a node:dgram socket
 * (`bind({ fd })`) only to call setRecvBufferSize/setSendBufferSize, and
 * stop that socket from reading at once (the fd stays the native layer's:
 * the dgram socket is never closed, which would close the fd, and its reads
 * are stopped in the same tick, before the event loop can poll the fd).
 * Linux only; anything missing makes it return false and change nothing.
 * The kernel caps the size at net.core.rmem_max / wmem_max.
 */
import { createSocket, type Socket } from 'node:dgram';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';

/** The adopted sockets: kept referenced (never closed; see above). */
const adopted: Socket[] = [];

function inodeOfPort(port: number, family: 4 | 6): string | undefined {
  // The socket's own family first (a v4 and a v6 socket may share a port number).
  const tables = family === 6 ? ['/proc/self/net/udp6', '/proc/self/net/udp'] : ['/proc/self/net/udp', '/proc/self/net/udp6'];
  for (const table of tables) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      const local = f[1];
      if (!local) continue;
      if (parseInt(local.slice(local.lastIndexOf(':') + 1), 16) === port) return f[9];
    }
  }
  return undefined;
}

function fdOfInode(inode: string): number | undefined {
  const want = `socket:[${inode}]`;
  for (const e of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${e}`) === want) return Number(e);
    } catch {}
  }
  return undefined;
}

/** Set SO_RCVBUF/SO_SNDBUF of this process's UDP socket bound to `port`. True if done. */
export function setUdpBuffers(port: number, family: 4 | 6, bytes: number): boolean {
  try {
    const inode = inodeOfPort(port, family);
    const fd = inode ? fdOfInode(inode) : undefined;
    if (fd === undefined) return false;
    const sock = createSocket({ type: family === 6 ? 'udp6' : 'udp4' });
    sock.on('error', () => {});
    sock.on('message', () => {});
    // bind({ fd }) starts reading synchronously: make sure we can stop it before adopting anything.
    const state = Object.getOwnPropertySymbols(sock).find((x) => x.description === 'state symbol');
    const handle = state ? (sock as unknown as Record<symbol, { handle?: { recvStop?: () => number } }>)[state]?.handle : undefined;
    if (!handle || typeof handle.recvStop !== 'function') {
      sock.close();
      return false;
    }
    sock.bind({ fd });
    handle.recvStop();
    sock.unref();
    adopted.push(sock);
    sock.setRecvBufferSize(bytes);
    sock.setSendBufferSize(bytes);
    return true;
  } catch {
    return false;
  }
}
