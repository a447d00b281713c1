/**
 * WriteGate: who may write a region right now — the ownership switch of a
 * live migration. One gate guards every path into the store (the sharer's
 * own export and the peers it serves): `wrap(store)` gives a layer bound to
 * this gate; all of them open and close together.
 *
 *   open       writes pass
 *   closed     writes fail with EPERM (`reason` says why: suspended for a
 *              migration, ownership moved to another node, not the owner yet)
 *
 * `close()` waits for the writes already inside the store to finish, so
 * once it resolves no write is in flight and none will start: the dirty
 * list taken then is final. Reads always pass.
 */
import { QuicmapError } from '../../base/errors.ts';
import type { ReadWriterAt } from '../rwat.ts';
import { WriteAdmissionLayer } from './write-admission.ts';

export class WriteGate {
  private openState: boolean;
  private why: string;
  private inFlight = 0;
  private drained: Array<() => void> = [];

  constructor(open = true, reason = 'writes are closed') {
    this.openState = open;
    this.why = reason;
  }

  get isOpen(): boolean {
    return this.openState;
  }

  get reason(): string {
    return this.why;
  }

  open(): void {
    this.openState = true;
  }

  /** Refuse new writes from now on; resolves once the writes already admitted are done. */
  async close(reason: string): Promise<void> {
    this.openState = false;
    this.why = reason;
    if (this.inFlight > 0) await new Promise<void>((r) => this.drained.push(r));
  }

  /** Update the refusal message (e.g. after a handover completes). */
  setReason(reason: string): void {
    this.why = reason;
  }

  async admit<T>(fn: () => Promise<T>): Promise<T> {
    if (!this.openState) throw new QuicmapError('EPERM', this.why);
    this.inFlight++;
    try {
      return await fn();
    } finally {
      if (--this.inFlight === 0) for (const d of this.drained.splice(0)) d();
    }
  }

  wrap(store: ReadWriterAt): ReadWriterAt {
    return new WriteAdmissionLayer(store, (fn) => this.admit(fn));
  }
}
