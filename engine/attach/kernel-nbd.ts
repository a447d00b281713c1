/**
 * Kernel NBD attach: make an export of the in-process NbdServer a real block
 * device, /dev/nbdX, through the classic ioctl interface.
 *
 * For each connection a socketpair is made: one end goes to the kernel
 * (NBD_SET_SOCK needs a real socket fd), the other is served by
 * `NbdServer.serveConnection(socket, { preNegotiated: name })`, which starts
 * in the transmission phase as the kernel expects. The device is configured
 * (NBD_SET_BLKSIZE, NBD_SET_SIZE_BLOCKS, NBD_SET_FLAGS with the export's
 * transmission flags so the kernel sends FLUSH/FUA/TRIM/WRITE_ZEROES and may
 * use several connections when CAN_MULTI_CONN is set, NBD_SET_TIMEOUT), then
 * NBD_DO_IT runs on a native thread for the life of the device. Readiness is
 * detected by polling sysfs (/sys/block/nbdX/pid and size). Detach sends
 * NBD_DISCONNECT and waits for NBD_DO_IT to return (then NBD_CLEAR_SOCK).
 *
 * Everything that does not need the kernel — ioctl numbers, flag
 * computation, device discovery in a sysfs tree — is plain code with unit
 * tests (test/native/kernel-nbd.test.ts, with a fake sysfs tree).
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { QuicmapError } from '../../base/errors.ts';
import { loadNative, nativeUnavailableReason } from '../../native/index.ts';

/** _IO(0xab, n): the kernel NBD ioctls (include/uapi/linux/nbd.h). */
const nbdIo = (n: number): number => (0xab << 8) | n;
export const NBD_IOCTL = {
  SET_SOCK: nbdIo(0),
  SET_BLKSIZE: nbdIo(1),
  SET_SIZE: nbdIo(2),
  DO_IT: nbdIo(3),
  CLEAR_SOCK: nbdIo(4),
  CLEAR_QUE: nbdIo(5),
  PRINT_DEBUG: nbdIo(6),
  SET_SIZE_BLOCKS: nbdIo(7),
  DISCONNECT: nbdIo(8),
  SET_TIMEOUT: nbdIo(9),
  SET_FLAGS: nbdIo(10),
} as const;

/** Transmission flags (NBD protocol, doc/proto.md). */
export const NBD_FLAG = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

/** Flags the kernel client acts on; the rest (DF, RESIZE, CACHE, FAST_ZERO) it cannot use. */
export const KERNEL_NBD_FLAG_MASK =
  NBD_FLAG.HAS_FLAGS | NBD_FLAG.READ_ONLY | NBD_FLAG.SEND_FLUSH | NBD_FLAG.SEND_FUA | NBD_FLAG.ROTATIONAL | NBD_FLAG.SEND_TRIM | NBD_FLAG.SEND_WRITE_ZEROES | NBD_FLAG.CAN_MULTI_CONN;

export interface KernelFlagInput {
  /** The export's transmission flags as the server advertises them. */
  exportFlags: number;
  readOnly?: boolean;
  connections?: number;
}

/**
 * Flags for NBD_SET_FLAGS: the export's transmission flags, limited to what
 * the kernel understands, READ_ONLY forced when asked. Throws when several
 * connections are wanted but the export lacks CAN_MULTI_CONN (the kernel
 * would refuse NBD_DO_IT).
 */
export function kernelNbdFlags(input: KernelFlagInput): number {
  let f = (input.exportFlags & KERNEL_NBD_FLAG_MASK) | NBD_FLAG.HAS_FLAGS;
  if (input.readOnly) f |= NBD_FLAG.READ_ONLY;
  if (f & NBD_FLAG.READ_ONLY) f &= ~(NBD_FLAG.SEND_TRIM | NBD_FLAG.SEND_WRITE_ZEROES);
  if ((input.connections ?? 1) > 1 && !(f & NBD_FLAG.CAN_MULTI_CONN))
    throw new QuicmapError('EINVAL', `${input.connections} connections need an export with CAN_MULTI_CONN`);
  return f >>> 0;
}

/** Kernel NBD block size: a power of two in [512, page size], from the export's preferences. */
export function kernelBlockSize(info: { minBlock?: number; preferredBlock?: number }, pageSize = 4096): number {
  let bs = 512;
  const want = Math.max(info.minBlock ?? 512, Math.min(info.preferredBlock ?? 4096, pageSize));
  while (bs < want && bs < pageSize) bs *= 2;
  return bs;
}

const NBD_NAME = /^nbd(\d+)$/;

/** nbd devices the kernel knows (from sysfs), sorted by number: ['nbd0', 'nbd1', ...]. */
export function listNbdDevices(sysfsRoot = '/sys'): string[] {
  let names: string[];
  try {
    names = readdirSync(join(sysfsRoot, 'block'));
  } catch {
    return [];
  }
  return names
    .filter((n) => NBD_NAME.test(n))
    .sort((a, b) => Number(NBD_NAME.exec(a)![1]) - Number(NBD_NAME.exec(b)![1]));
}

function readSys(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** A device is in use while NBD_DO_IT runs (sysfs `pid` exists) or it has a size. */
export function nbdDeviceInUse(name: string, sysfsRoot = '/sys'): boolean {
  const dir = join(sysfsRoot, 'block', name);
  if (existsSync(join(dir, 'pid'))) return true;
  const size = Number(readSys(join(dir, 'size')) ?? '0');
  return size > 0;
}

/** The first free /dev/nbdX (present in sysfs and under devRoot), or undefined. */
export function findFreeNbdDevice(sysfsRoot = '/sys', devRoot = '/dev'): string | undefined {
  for (const name of listNbdDevices(sysfsRoot)) {
    if (!existsSync(join(devRoot, name))) continue;
    if (!nbdDeviceInUse(name, sysfsRoot)) return join(devRoot, name);
  }
  return undefined;
}

export interface KernelNbdStatus {
  ok: boolean;
  reason: string;
}

/** Whether kernel NBD can be used here, and why not. */
export function kernelNbdStatus(sysfsRoot = '/sys', devRoot = '/dev', needNative = true): KernelNbdStatus {
  const devices = listNbdDevices(sysfsRoot).filter((n) => existsSync(join(devRoot, n)));
  if (devices.length === 0) {
    const mod = existsSync(join(sysfsRoot, 'module', 'nbd'));
    return { ok: false, reason: mod ? `nbd module loaded but no ${devRoot}/nbd* nodes` : `no kernel NBD (no ${sysfsRoot}/block/nbd*; modprobe nbd, or the kernel lacks CONFIG_BLK_DEV_NBD)` };
  }
  if (needNative) {
    const why = nativeUnavailableReason();
    if (why) return { ok: false, reason: why };
  }
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return { ok: false, reason: 'kernel NBD attach needs root (CAP_SYS_ADMIN)' };
  if (!findFreeNbdDevice(sysfsRoot, devRoot)) return { ok: false, reason: `all ${devices.length} nbd devices are in use` };
  return { ok: true, reason: `kernel NBD: ${devices.length} devices` };
}

/** True when an export can be attached to a kernel NBD device here. */
export function kernelNbdAvailable(sysfsRoot = '/sys', devRoot = '/dev'): boolean {
  return kernelNbdStatus(sysfsRoot, devRoot).ok;
}

/** Wait until the kernel reports the device running (pid file) with a size. */
export async function waitNbdReady(name: string, sysfsRoot = '/sys', timeoutMs = 10_000, failed?: () => unknown): Promise<void> {
  const dir = join(sysfsRoot, 'block', name);
  const deadline = Date.now() + timeoutMs;
  let delay = 2;
  for (;;) {
    const err = failed?.();
    if (err) throw err;
    if (existsSync(join(dir, 'pid')) && Number(readSys(join(dir, 'size')) ?? '0') > 0) return;
    if (Date.now() > deadline) throw new QuicmapError('ETIMEDOUT', `/dev/${name} not ready after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 50);
  }
}

export interface AttachKernelNbdOptions {
  /** Called once per connection with our end of a socketpair, e.g. `(s) => server.serveConnection(s, { preNegotiated: name })`. */
  serve: (socket: Socket, index: number) => void;
  /** Export size in bytes (a multiple of blockSize). */
  size: number;
  /** Logical block size (power of two, 512..page size; default 4096). */
  blockSize?: number;
  /** Flags for NBD_SET_FLAGS (use kernelNbdFlags()). */
  flags: number;
  /** Sockets the kernel may use in parallel (needs CAN_MULTI_CONN when > 1; default 1). */
  connections?: number;
  /** /dev/nbdX to use (default: the first free one). */
  device?: string;
  /** Kernel request timeout in seconds (0 = kernel default). */
  timeoutSec?: number;
  readyTimeoutMs?: number;
  sysfsRoot?: string;
  devRoot?: string;
}

export interface KernelNbdAttachment {
  device: string;
  /** Resolves when NBD_DO_IT has returned (after detach, or if the server hung up). */
  exited: Promise<void>;
  detach(): Promise<void>;
}

export async function attachKernelNbd(opts: AttachKernelNbdOptions): Promise<KernelNbdAttachment> {
  const native = loadNative();
  const sysfsRoot = opts.sysfsRoot ?? '/sys';
  const devRoot = opts.devRoot ?? '/dev';
  const blockSize = opts.blockSize ?? 4096;
  const connections = Math.max(1, opts.connections ?? 1);
  if (opts.size % blockSize !== 0) throw new QuicmapError('EINVAL', `size ${opts.size} is not a multiple of the block size ${blockSize}`);
  if (connections > 1 && !(opts.flags & NBD_FLAG.CAN_MULTI_CONN)) throw new QuicmapError('EINVAL', 'several connections need CAN_MULTI_CONN');
  const device = opts.device ?? findFreeNbdDevice(sysfsRoot, devRoot);
  if (!device) throw new QuicmapError('ENOSPC', 'no free /dev/nbd* device');
  const name = device.split('/').pop()!;

  const kernelEnds: number[] = [];
  const sockets: Socket[] = [];
  try {
    for (let i = 0; i < connections; i++) {
      const [ours, theirs] = native.socketPair();
      kernelEnds.push(theirs);
      const s = new Socket({ fd: ours, readable: true, writable: true });
      sockets.push(s);
      opts.serve(s, i);
    }
  } catch (e) {
    for (const fd of kernelEnds) native.closeFd(fd);
    for (const s of sockets) s.destroy();
    throw e;
  }

  let exitErr: Error | undefined;
  let exitedFlag = false;
  let resolveExit!: () => void;
  const exited = new Promise<void>((r) => (resolveExit = r));
  try {
    native.nbdAttach(device, kernelEnds, blockSize, opts.size, opts.flags, opts.timeoutSec ?? 0, (errno) => {
      exitedFlag = true;
      if (errno) exitErr = new QuicmapError('EIO', `NBD_DO_IT on ${device} ended with errno ${errno}`);
      resolveExit();
    });
  } catch (e) {
    for (const fd of kernelEnds) {
      try {
        native.closeFd(fd);
      } catch {}
    }
    for (const s of sockets) s.destroy();
    throw e;
  }

  let detaching: Promise<void> | undefined;
  const detach = (): Promise<void> => {
    detaching ??= (async () => {
      if (!exitedFlag) {
        try {
          native.nbdDisconnect(device);
        } catch {}
        await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
      }
      for (const s of sockets) s.destroy();
    })();
    return detaching;
  };

  try {
    await waitNbdReady(name, sysfsRoot, opts.readyTimeoutMs ?? 10_000, () => (exitedFlag ? exitErr ?? new QuicmapError('EIO', `NBD_DO_IT on ${device} returned before the device was ready`) : undefined));
  } catch (e) {
    await detach();
    throw e;
  }
  return { device, exited, detach };
}

/** The subset of NbdServer this module needs (engine/nbd/server.ts). */
export interface NbdServerLike {
  exportInfo(name: string): { size: number; flags: number; minBlock: number; preferredBlock: number; maxBlock: number; readOnly?: boolean } | undefined;
  serveConnection(socket: Socket, opts?: { preNegotiated?: string }): unknown;
}

/**
 * Mount an export as /dev/nbdX: what engine/attach/attach.ts calls.
 * Returns { method: 'kernel-nbd', path: '/dev/nbdX', unmount() }.
 */
export async function mountKernelNbd(opts: {
  server: NbdServerLike;
  exportName: string;
  readOnly?: boolean;
  connections?: number;
  log?: (m: string) => void;
  sysfsRoot?: string;
  devRoot?: string;
}): Promise<{ method: 'kernel-nbd'; path: string; unmount(): Promise<void> }> {
  const info = opts.server.exportInfo(opts.exportName);
  if (!info) throw new QuicmapError('EINVAL', `no export named "${opts.exportName}"`);
  const connections = opts.connections ?? (info.flags & NBD_FLAG.CAN_MULTI_CONN ? 2 : 1);
  const flags = kernelNbdFlags({ exportFlags: info.flags, readOnly: opts.readOnly || info.readOnly, connections });
  const blockSize = kernelBlockSize(info);
  const size = Math.floor(info.size / blockSize) * blockSize;
  if (size !== info.size) opts.log?.(`kernel NBD: export size ${info.size} is not a multiple of ${blockSize}; the device shows ${size} bytes`);
  const att = await attachKernelNbd({
    serve: (s) => opts.server.serveConnection(s, { preNegotiated: opts.exportName }),
    size,
    blockSize,
    flags,
    connections,
    sysfsRoot: opts.sysfsRoot,
    devRoot: opts.devRoot,
  });
  opts.log?.(`mounted "${opts.exportName}" with kernel NBD at ${att.device} (${connections} connection${connections > 1 ? 's' : ''}, flags 0x${flags.toString(16)})`);
  return { method: 'kernel-nbd', path: att.device, unmount: () => att.detach() };
}

export type MountPathKind = 'kernel-nbd' | 'nbdfuse' | 'none';

/** Which mount path this machine supports: kernel NBD first, else nbdfuse; with the reason. */
export function chooseMountPath(opts: { sysfsRoot?: string; devRoot?: string; hasNbdfuse?: () => boolean } = {}): { kind: MountPathKind; reason: string } {
  const k = kernelNbdStatus(opts.sysfsRoot, opts.devRoot);
  if (k.ok) return { kind: 'kernel-nbd', reason: k.reason };
  const fuse = opts.hasNbdfuse ? opts.hasNbdfuse() : existsSync('/usr/bin/nbdfuse') && existsSync(join(opts.devRoot ?? '/dev', 'fuse'));
  if (fuse) return { kind: 'nbdfuse', reason: `nbdfuse (${k.reason})` };
  return { kind: 'none', reason: `${k.reason}; and no nbdfuse with /dev/fuse` };
}
