/**
 * Pull orders: in which order a puller fetches a region's chunks in the
 * background, as policy objects (the thesis' pull heuristics, r3map's
 * priority function, Silo's block orders). A policy turns the chunk count
 * (and, for dynamic ones, what the layer has seen so far) into a plan: a
 * list of chunk indices, best first. The puller walks the plan and skips
 * chunks that are already local or in flight — reads that need a chunk now
 * fetch it themselves at top priority (NeedAt), ahead of any plan.
 *
 * Dynamic policies (volatility) are asked again every `replanEvery` picks,
 * so what changed meanwhile reorders the rest.
 */
import { QuicmapError } from '../../base/errors.ts';

export interface PlanContext {
  chunks: number;
  chunkSize: number;
  /** Writes plus owner-side changes seen per chunk (volatility). */
  changes(i: number): number;
}

export interface PullOrder {
  readonly name: string;
  /** Chunks in the order to pull them; chunks left out are pulled after, in index order. */
  plan(ctx: PlanContext): number[];
  /** Ask for a new plan after this many picks (dynamic orders); absent: plan once. */
  readonly replanEvery?: number;
}

function range(n: number): number[] {
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) out[i] = i;
  return out;
}

/** Start to end. */
export const sequentialOrder: PullOrder = { name: 'sequential', plan: (ctx) => range(ctx.chunks) };

/** End to start (formats whose index sits at the end: MP4 without faststart, zip). */
export const reverseOrder: PullOrder = { name: 'reverse', plan: (ctx) => range(ctx.chunks).reverse() };

/**
 * r3map's pull priority: a function of a chunk's offset, higher first; ties
 * keep index order.
 */
export function priorityOrder(priority: (offset: number) => number, name = 'priority'): PullOrder {
  return {
    name,
    plan(ctx) {
      const keys = new Float64Array(ctx.chunks);
      for (let i = 0; i < ctx.chunks; i++) {
        const p = Number(priority(i * ctx.chunkSize));
        keys[i] = Number.isFinite(p) ? p : 0;
      }
      return range(ctx.chunks).sort((a, b) => keys[b]! - keys[a]! || a - b);
    },
  };
}

/**
 * Silo's volatility order: least-changed chunks first, so chunks that are
 * still being written are pulled last (and fewer pulls are wasted on bytes
 * that change again). Re-planned as changes come in.
 */
export function volatilityOrder(replanEvery = 256): PullOrder {
  return {
    name: 'volatility',
    replanEvery,
    plan(ctx) {
      const keys = new Uint32Array(ctx.chunks);
      for (let i = 0; i < ctx.chunks; i++) keys[i] = ctx.changes(i);
      return range(ctx.chunks).sort((a, b) => keys[a]! - keys[b]! || a - b);
    },
  };
}

/**
 * Learned from an access trace: the chunks a recorded workload touched
 * first, in the order it touched them, then everything else in index order.
 */
export function traceOrder(trace: readonly number[], name = 'trace'): PullOrder {
  return {
    name,
    plan(ctx) {
      const seen = new Uint8Array(ctx.chunks);
      const out: number[] = [];
      for (const i of trace) {
        if (Number.isInteger(i) && i >= 0 && i < ctx.chunks && !seen[i]) {
          seen[i] = 1;
          out.push(i);
        }
      }
      return out;
    },
  };
}

/** The orders `--pull-order` names without a file. */
export const NAMED_ORDERS = ['sequential', 'reverse', 'volatility'] as const;

/** Parse `sequential | reverse | volatility | trace:FILE | priority:MODULE` into a spec (nothing is read yet). */
export type PullOrderSpec = { kind: 'sequential' | 'reverse' | 'volatility' } | { kind: 'trace'; path: string } | { kind: 'priority'; path: string };

export function parsePullOrder(text: string): PullOrderSpec {
  if (text === 'sequential' || text === 'reverse' || text === 'volatility') return { kind: text };
  const colon = text.indexOf(':');
  const kind = colon < 0 ? text : text.slice(0, colon);
  const path = colon < 0 ? '' : text.slice(colon + 1);
  if ((kind === 'trace' || kind === 'priority') && path !== '') return { kind, path };
  throw new QuicmapError(
    'EINVAL',
    `unknown pull order "${text}" (use sequential, reverse, volatility, trace:FILE — a trace recorded with --record-trace — or priority:MODULE.js exporting (offset) => number)`,
  );
}
