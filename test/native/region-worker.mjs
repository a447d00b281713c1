// Worker used by the native tests: touches a mapping from a thread other than
// the one serving its faults. Plain JS so it loads without a TS loader.
import { closeSync, openSync, readSync } from 'node:fs';
import { createRequire } from 'node:module';
import { parentPort } from 'node:worker_threads';

const native = createRequire(import.meta.url)('../../native/build/Release/quicmap_native.node');

parentPort.on('message', (msg) => {
  try {
    const view = new Uint8Array(native.view(msg.id), 0, msg.length);
    if (msg.op === 'readAll') {
      // Touch every byte (faults are served by the main thread meanwhile).
      const copy = new Uint8Array(msg.length);
      copy.set(view);
      parentPort.postMessage({ ok: true, data: copy }, [copy.buffer]);
    } else if (msg.op === 'write') {
      for (let i = 0; i < msg.offsets.length; i++) view[msg.offsets[i]] = msg.values[i];
      parentPort.postMessage({ ok: true });
    } else if (msg.op === 'readFileInto') {
      // The kernel writes into the mapping (copy_to_user): a kernel-mode fault.
      const fd = openSync(msg.path, 'r');
      try {
        const n = readSync(fd, view, msg.offset, msg.count, 0);
        parentPort.postMessage({ ok: true, sum: n });
      } finally {
        closeSync(fd);
      }
    } else if (msg.op === 'touch') {
      let s = 0;
      for (let off = msg.from; off < msg.to; off += msg.step) s += view[off];
      parentPort.postMessage({ ok: true, sum: s });
    } else {
      parentPort.postMessage({ ok: false, error: `unknown op ${msg.op}` });
    }
  } catch (e) {
    parentPort.postMessage({ ok: false, error: String(e?.stack ?? e) });
  }
});
