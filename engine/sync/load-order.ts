/**
 * Turn a `--pull-order` spec into a PullOrder, reading what it names: a
 * recorded trace (`trace:FILE`) or a module exporting an r3map-style
 * priority function (`priority:MODULE.js`, `export default (offset) => n`).
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { QuicmapError } from '../../base/errors.ts';
import { parseTrace, rescaleTrace } from './access-trace.ts';
import { parsePullOrder, priorityOrder, reverseOrder, sequentialOrder, traceOrder, volatilityOrder, type PullOrder } from './pull-order.ts';

export async function loadPullOrder(text: string, chunkSize: number): Promise<PullOrder> {
  const spec = parsePullOrder(text);
  switch (spec.kind) {
    case 'sequential':
      return sequentialOrder;
    case 'reverse':
      return reverseOrder;
    case 'volatility':
      return volatilityOrder();
    case 'trace': {
      let body: string;
      try {
        body = await readFile(spec.path, 'utf8');
      } catch (e) {
        throw new QuicmapError('EINVAL', `cannot read the trace ${spec.path}: ${(e as Error).message}`);
      }
      const t = parseTrace(body, spec.path);
      return traceOrder(rescaleTrace(t, chunkSize), `trace:${spec.path}`);
    }
    case 'priority': {
      let mod: { default?: unknown };
      try {
        mod = (await import(pathToFileURL(resolve(spec.path)).href)) as { default?: unknown };
      } catch (e) {
        throw new QuicmapError('EINVAL', `cannot load the priority module ${spec.path}: ${(e as Error).message}`);
      }
      if (typeof mod.default !== 'function') throw new QuicmapError('EINVAL', `${spec.path} must export a default function (offset) => priority`);
      return priorityOrder(mod.default as (offset: number) => number, `priority:${spec.path}`);
    }
  }
}
