/**
 * Make an export of an in-process NbdServer mmap-able: the kernel NBD device
 * where the kernel has NBD, otherwise a file under nbdfuse. Callers learn
 * which one was used from `method`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QuicmapError } from '../../base/errors.ts';
import type { NbdServer } from '../nbd/server.ts';
import { mountWithNbdfuse, nbdfuseAvailable } from './nbdfuse.ts';
import { kernelNbdAvailable, mountKernelNbd } from './kernel-nbd.ts';

export type AttachMethod = 'kernel-nbd' | 'nbdfuse';

export interface AttachOptions {
  server: NbdServer;
  exportName: string;
  /** Mount point for nbdfuse (created if missing). Ignored by kernel NBD, whose path is /dev/nbdX. */
  dir: string;
  /** 'auto' picks kernel NBD when present, else nbdfuse. */
  method?: 'auto' | AttachMethod;
  readOnly?: boolean;
  log?: (message: string) => void;
}

export interface Attached {
  method: AttachMethod;
  /** The mmap-able path: /dev/nbdX or DIR/region. */
  path: string;
  unmount(): Promise<void>;
}

export async function attachExport(opts: AttachOptions): Promise<Attached> {
  const method = opts.method ?? 'auto';
  if (!opts.server.exportInfo(opts.exportName)) throw new QuicmapError('EINVAL', `no export named "${opts.exportName}"`);
  if (method !== 'nbdfuse') {
    if (kernelNbdAvailable()) {
      return mountKernelNbd({ server: opts.server, exportName: opts.exportName, readOnly: opts.readOnly, log: opts.log });
    }
    if (method === 'kernel-nbd') throw new QuicmapError('ENOTSUP', 'kernel NBD is not available on this machine (no /dev/nbd0; modprobe nbd)');
  }
  const avail = nbdfuseAvailable();
  if (!avail.ok) throw new QuicmapError('ENOTSUP', `cannot make the region mmap-able: no kernel NBD and ${avail.reason}`);
  // The FUSE hop stays local and on a unix socket: the fastest path to the server.
  const sockDir = mkdtempSync(join(tmpdir(), 'quicmap-sock-'));
  const ep = await opts.server.listen({ path: join(sockDir, 'nbd.sock') });
  const dropSocket = async () => {
    await ep.close();
    rmSync(sockDir, { recursive: true, force: true });
  };
  let m;
  try {
    m = await mountWithNbdfuse({ uri: ep.uri(opts.exportName), dir: opts.dir, readOnly: opts.readOnly, log: opts.log });
  } catch (e) {
    await dropSocket();
    throw e;
  }
  const fuse = m;
  return {
    method: 'nbdfuse',
    path: fuse.path,
    unmount: async () => {
      await fuse.unmount();
      await dropSocket();
    },
  };
}
