#!/usr/bin/env node
// The `quicmap` command. The project is TypeScript with erasable syntax only,
// so a Node.js that strips types itself (22.18+, 23.6+, 24: reported by
// process.features.typescript) runs cli.ts directly; older ones (Node 20)
// go through tsx's loader. QUICMAP_TSX=1 forces tsx (to compare start-up).
const native = Boolean(process.features.typescript) && process.env.QUICMAP_TSX !== '1';
if (native) {
  // Type stripping may still announce itself as experimental; that line
  // would land in every command's stderr.
  const emit = process.emitWarning;
  process.emitWarning = function (warning, ...rest) {
    const text = typeof warning === 'string' ? warning : warning?.message;
    if (typeof text === 'string' && /type stripping/i.test(text)) return;
    return emit.call(process, warning, ...rest);
  };
} else {
  const { register } = await import('tsx/esm/api');
  register();
}
const { main } = await import('./cli.ts');
process.exitCode = await main(process.argv.slice(2));
