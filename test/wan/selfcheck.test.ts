/**
 * The lab's self-check measures the link it is given: a link configured as
 * asked passes, and a misconfigured one (asked 50 ms, built with none; asked
 * 30 % loss, built with none) fails naming what is wrong.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { needCondition, hasTool, withTimeout } from '../helpers/env.ts';
import { Lab } from '../../bench/wan/lab.ts';
import { selfCheck, lossWithinTolerance } from '../../bench/wan/selfcheck.ts';

const test = suite('wan-selfcheck');
const ok = process.getuid?.() === 0 && ['ip', 'tc', 'cc', 'ping'].every(hasTool);
const run = needCondition(test, ok, 'root with ip, tc, cc and ping (apt-get install iproute2 iputils-ping)');

test('loss tolerance: binomial, both directions', () => {
  assert.ok(lossWithinTolerance(500, 10, 0.01), '10 of 500 round trips lost fits 1 % each way');
  assert.ok(lossWithinTolerance(500, 0, 0), 'none lost fits no loss');
  assert.not.ok(lossWithinTolerance(500, 0, 0.05), 'none lost does not fit 5 % each way');
  assert.not.ok(lossWithinTolerance(500, 60, 0.01), '12 % lost does not fit 1 % each way');
});

run('a correctly configured link passes; a link asked for 50 ms but built with none fails; so does missing loss', async () => {
  await withTimeout(90_000, 'self-check', async () => {
    const lab = await Lab.create();
    try {
      await lab.configure({ rttMs: 50, loss: 0.02 });
      const good = await selfCheck(lab, lab.config, { rttProbes: 10, lossProbes: 300 });
      assert.ok(good.ok, `configured link passes: ${good.problems.join('; ')}`);
      assert.ok(good.rtt.samplesMs.length >= 5, 'the RTT samples are recorded');
      assert.ok(good.loss.delayLine.dropped > 0, 'the delay line dropped packets as configured');

      await lab.configure({ rttMs: 0, loss: 0 });
      const wrongRtt = await selfCheck(lab, { rttMs: 50, loss: 0 }, { rttProbes: 10, lossProbes: 200 });
      assert.not.ok(wrongRtt.ok, 'asked 50 ms, got ~0: the check fails');
      assert.ok(wrongRtt.rtt.medianMs < 45, `it records what it measured (${wrongRtt.rtt.medianMs} ms)`);
      assert.match(wrongRtt.problems.join(' '), /RTT .* measured, 50 ms asked/);

      const wrongLoss = await selfCheck(lab, { rttMs: 0, loss: 0.3 }, { rttProbes: 10, lossProbes: 200 });
      assert.not.ok(wrongLoss.ok, 'asked 30 % loss, got none: the check fails');
      assert.match(wrongLoss.problems.join(' '), /round-trip loss/);
    } finally {
      await lab.close();
    }
  });
});

test.run();
