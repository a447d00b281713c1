/**
 * A process that creates a WAN lab, prints its namespace names as one JSON
 * line and waits to be killed: the lab tests kill it with SIGTERM (the lab
 * must remove its namespaces on the way out) or SIGKILL (the next lab's
 * stale cleanup must remove them).
 */
import { Lab } from '../../bench/wan/lab.ts';

const lab = await Lab.create();
process.stdout.write(`${JSON.stringify([lab.client, lab.middle, lab.server])}\n`);
setInterval(() => {}, 1 << 30);
