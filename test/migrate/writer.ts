/**
 * The application of the migration test: random writes at a fixed rate
 * against an NBD export, each logged (seq, offset, length, pattern byte)
 * only once acknowledged. Which export it writes to is read from a control
 * file before every write: the source's --on-resume hook puts the target's
 * URI there (and SIGCONTs this process after --on-suspend SIGSTOPped it).
 * A refused write (the source closed writes) is retried, against whatever
 * the control file names by then. SIGTERM: stop after the current write.
 *
 * Usage: node --import tsx writer.ts CTL LOG SIZE RATE SEED
 */
import { appendFileSync, readFileSync } from 'node:fs';
import { NbdClient } from '../../engine/nbd/client.ts';

const [ctl, logPath, sizeText, rateText, seedText] = process.argv.slice(2);
const size = Number(sizeText);
const intervalMs = 1000 / Number(rateText);
let seed = Number(seedText) >>> 0;
const rand = () => {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
};
let stopping = false;
process.on('SIGTERM', () => (stopping = true));

let uri = '';
let client: NbdClient | undefined;
async function target(): Promise<NbdClient> {
  const want = readFileSync(ctl, 'utf8').trim();
  if (want !== uri || !client) {
    await client?.close().catch(() => {});
    client = await NbdClient.connect(want);
    uri = want;
    process.stderr.write(`writer: writing to ${uri}\n`);
  }
  return client;
}

let seq = 1;
while (!stopping) {
  const len = 1 + Math.floor(rand() * 8192);
  const off = Math.floor(rand() * (size - len));
  const byte = 1 + (seq % 255);
  const data = new Uint8Array(len).fill(byte);
  for (;;) {
    try {
      const c = await target();
      await c.writeAt(data, off);
      break;
    } catch (e) {
      process.stderr.write(`writer: seq ${seq} refused (${(e as Error).message}); retrying\n`);
      client = undefined;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  appendFileSync(logPath, `${seq} ${off} ${len} ${byte}\n`);
  seq++;
  await new Promise((r) => setTimeout(r, intervalMs));
}
await client?.flush().catch(() => {});
await client?.close().catch(() => {});
process.stderr.write(`writer: stopped after ${seq - 1} writes\n`);
