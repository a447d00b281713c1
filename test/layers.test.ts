/**
 * The import order of docs/ARCHITECTURE.md: packages import only downward.
 * Every relative import (static, dynamic, `new URL(...)` of a module) of every
 * source file outside test/ is resolved and checked against the table below;
 * an import against the order fails this test with the file and the line.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Which packages each package may import (itself always). */
const MAY_IMPORT: Record<string, readonly string[]> = {
  base: [],
  native: ['base'],
  crypto: ['base'],
  engine: ['base', 'native'],
  transports: ['base', 'native', 'crypto'],
  p2p: ['base', 'native', 'crypto', 'engine', 'transports'],
  bin: ['base', 'native', 'crypto', 'engine', 'transports', 'p2p'],
  bench: ['base', 'native', 'crypto', 'engine', 'transports', 'p2p', 'bin'],
};

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    if (name === 'node_modules' || name === 'build') continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sources(p));
    else if (/\.(ts|mts|mjs|js|cjs)$/.test(name)) out.push(p);
  }
  return out;
}

const packageOf = (absPath: string): string | undefined => relative(ROOT, absPath).split(sep)[0];

/** [line number, specifier] of every relative module reference in a file. */
export function relativeImports(src: string): Array<[number, string]> {
  const out: Array<[number, string]> = [];
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+|new URL\(\s*)['"](\.{1,2}\/[^'"]*)['"]/g;
  for (const m of src.matchAll(re)) {
    const spec = m[1]!;
    // `new URL('./x', import.meta.url)` of data files (build outputs, workers) counts only if it names source.
    if (m[0].startsWith('new URL') && !/\.(ts|mjs|js)$/.test(spec)) continue;
    out.push([src.slice(0, m.index).split('\n').length, spec]);
  }
  return out;
}

test('the import scanner sees static, dynamic and side-effect imports', () => {
  const src = "import a from '../x.ts';\nconst b = await import('../../y.ts');\nimport '../z.ts';\nimport type { T } from './t.ts';";
  assert.equal(
    relativeImports(src).map(([, s]) => s),
    ['../x.ts', '../../y.ts', '../z.ts', './t.ts'],
  );
});

test('every package imports only downward', () => {
  const violations: string[] = [];
  let checked = 0;
  for (const pkg of Object.keys(MAY_IMPORT)) {
    const dir = join(ROOT, pkg);
    for (const file of sources(dir)) {
      const src = readFileSync(file, 'utf8');
      for (const [line, spec] of relativeImports(src)) {
        const target = resolve(dirname(file), spec);
        const to = packageOf(target);
        checked++;
        if (to === pkg || relative(ROOT, target) === 'package.json') continue;
        if (!to || !(to in MAY_IMPORT) || !MAY_IMPORT[pkg]!.includes(to)) {
          violations.push(`${relative(ROOT, file)}:${line} imports ${spec} (${pkg}/ may not import ${to ?? 'outside the tree'}/)`);
        }
      }
    }
  }
  assert.ok(checked > 100, `only ${checked} imports seen: the scanner is broken`);
  assert.equal(violations, [], violations.join('\n'));
});

test.run();
