/**
 * `npm run bench -- <name> [args]`: runs bench/<name>.ts, whose default
 * export takes the remaining arguments. Each benchmark measures quicmap and a
 * reference in the same run and prints ratios.
 */
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const dir = fileURLToPath(new URL('.', import.meta.url));
const names = readdirSync(dir)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts' && !f.startsWith('_'))
  .map((f) => f.slice(0, -3));
const [name, ...args] = process.argv.slice(2);
if (!name || name === '--help' || !names.includes(name)) {
  process.stdout.write(`usage: npm run bench -- <name> [options]\n\nbenchmarks: ${names.join(', ')}\n`);
  process.exit(name && name !== '--help' ? 2 : 0);
}
const mod = (await import(`./${name}.ts`)) as { default: (args: string[]) => Promise<void> };
await mod.default(args);
