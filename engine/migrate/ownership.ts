/**
 * Ownership of a region during a live migration, at the source, sans-IO
 * (the clock is an input: `handleTimeout(now)`). The two-phase handover:
 *
 *   owner ──prepare(target)──> suspended ──commit(target)──> handed-over
 *     ^                            │
 *     └──abort / prepare timeout───┘
 *
 * - `prepare` (the target's Finalize): the source stops its application
 *   (--on-suspend), closes writes and flushes; from then on neither node
 *   may write. Only one target may prepare at a time: a second Finalize
 *   gets EBUSY, naming the migration in progress.
 * - `commit`: the source gives up ownership for good (a read-only seeder);
 *   the target becomes the owner only once it has the commit's answer. So
 *   at any moment at most one node is writable — the source before commit,
 *   the target after — and if the target dies between prepare and commit,
 *   the prepare times out and the source is the owner again. If the source
 *   dies after prepare, the target never gets a commit answer and does not
 *   resume: the source (restarted) is still the owner.
 * - Finalize after the handover: EBUSY with "ownership moved to …".
 */
import { QuicmapError } from '../../base/errors.ts';

export type OwnershipPhase = 'owner' | 'suspended' | 'handed-over';

export class Ownership {
  private state: OwnershipPhase = 'owner';
  private target: string | undefined;
  private deadline: number | undefined;
  readonly prepareTimeoutMs: number;

  constructor(prepareTimeoutMs = 30_000) {
    this.prepareTimeoutMs = prepareTimeoutMs;
  }

  get phase(): OwnershipPhase {
    return this.state;
  }

  /** The target of the migration in progress or done. */
  get targetId(): string | undefined {
    return this.target;
  }

  get isWritable(): boolean {
    return this.state === 'owner';
  }

  /** Start finalizing towards `target`. Throws EBUSY when a migration is already finalizing or done. */
  prepare(target: string, now: number): void {
    if (this.state === 'suspended') throw new QuicmapError('EBUSY', `a migration to ${this.target} is already finalizing`);
    if (this.state === 'handed-over') throw new QuicmapError('EBUSY', `already migrated: ownership moved to ${this.target}`);
    this.state = 'suspended';
    this.target = target;
    this.deadline = now + this.prepareTimeoutMs;
  }

  /** Complete the handover. Only the target that prepared may commit. */
  commit(target: string): void {
    if (this.state === 'handed-over' && this.target === target) return; // a retried commit: same answer
    if (this.state !== 'suspended') throw new QuicmapError('EBUSY', this.state === 'owner' ? 'no migration is finalizing (it timed out or was aborted): this node is still the owner' : `ownership already moved to ${this.target}`);
    if (target !== this.target) throw new QuicmapError('EACCES', `the migration finalizing is ${this.target}'s, not ${target}'s`);
    this.state = 'handed-over';
    this.deadline = undefined;
  }

  /** Back to owner (the target gave up). Returns false when there was nothing to abort. */
  abort(target?: string): boolean {
    if (this.state !== 'suspended' || (target !== undefined && target !== this.target)) return false;
    this.state = 'owner';
    this.deadline = undefined;
    return true;
  }

  nextTimeout(): number | undefined {
    return this.deadline;
  }

  /** Returns true when a prepare timed out (the source is the owner again). */
  handleTimeout(now: number): boolean {
    if (this.deadline === undefined || now < this.deadline || this.state !== 'suspended') return false;
    this.state = 'owner';
    this.deadline = undefined;
    return true;
  }
}
