// Entry of an NBD worker thread (workers.ts). A worker does not inherit a
// loader registered at run time, so it registers tsx itself — unless this
// Node strips TypeScript types on its own.
if (!process.features?.typescript) {
  const { register } = await import('tsx/esm/api');
  register();
}
await import('./worker.ts');
