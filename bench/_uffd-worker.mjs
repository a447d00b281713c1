// Worker for bench/uffd.ts: touches mappings from a thread other than the one
// that serves LazyRegion faults (and the in-process NBD server behind nbdfuse).
import { closeSync, openSync } from 'node:fs';
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';
import { parentPort } from 'node:worker_threads';

const native = createRequire(import.meta.url)('../native/build/Release/quicmap_native.node');

function coldRead(view, chunk) {
  const dst = new Uint8Array(chunk);
  const t0 = performance.now();
  for (let off = 0; off < view.length; off += chunk) dst.set(view.subarray(off, Math.min(off + chunk, view.length)));
  return (performance.now() - t0) / 1000;
}

function touches(view, offsets) {
  const us = [];
  let s = 0;
  for (const off of offsets) {
    const t0 = performance.now();
    s += view[off];
    us.push((performance.now() - t0) * 1000);
  }
  return { us, s };
}

function withFile(path, length, fn) {
  const fd = openSync(path, 'r');
  try {
    const ab = native.mmap(fd, length, native.constants.PROT_READ, native.constants.MAP_SHARED, 0);
    try {
      return fn(new Uint8Array(ab));
    } finally {
      native.munmap(ab);
    }
  } finally {
    closeSync(fd);
  }
}

parentPort.on('message', (m) => {
  try {
    let r;
    if (m.op === 'coldRead') r = { secs: coldRead(new Uint8Array(native.view(m.id), 0, m.length), m.chunk) };
    else if (m.op === 'touch') r = touches(new Uint8Array(native.view(m.id), 0, m.length), m.offsets);
    else if (m.op === 'fileColdRead') r = { secs: withFile(m.path, m.length, (v) => coldRead(v, m.chunk)) };
    else if (m.op === 'fileTouch') r = withFile(m.path, m.length, (v) => touches(v, m.offsets));
    else throw new Error(`unknown op ${m.op}`);
    parentPort.postMessage({ ok: true, ...r });
  } catch (e) {
    parentPort.postMessage({ ok: false, error: String(e?.stack ?? e) });
  }
});
