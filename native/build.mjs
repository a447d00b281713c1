#!/usr/bin/env node
// Install step for quicmap's native addon (`npm install` runs it from the
// root package's "install" script; run it by hand with `node native/build.mjs`).
//
// Builds native/build/Release/quicmap_native.node with node-gyp against the
// headers of the node that runs this script. It never fails the install: on
// any problem it prints one clear reason, records it in
// native/build/BUILD_FAILED.txt (the loader quotes it) and exits 0, so the
// rest of quicmap still installs and the tests report the addon as missing.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const buildDir = join(here, 'build');
const failFile = join(buildDir, 'BUILD_FAILED.txt');
const say = (s) => process.stdout.write(`quicmap native: ${s}\n`);

function fail(reason) {
  try {
    mkdirSync(buildDir, { recursive: true });
    writeFileSync(failFile, reason + '\n');
  } catch {}
  say(`NOT BUILT — ${reason}`);
  say('quicmap still works without it (no LazyRegion, mmap or kernel NBD); fix the cause and run `node native/build.mjs`.');
  process.exit(0);
}

if (process.env.QUICMAP_SKIP_NATIVE === '1') fail('skipped because QUICMAP_SKIP_NATIVE=1');
if (process.platform !== 'linux') fail(`the addon is Linux-only (this is ${process.platform})`);

// node-gyp: npm hands its own copy to lifecycle scripts; otherwise look beside
// the npm that belongs to this node, then in node_modules, then on PATH.
function findNodeGyp() {
  const candidates = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  if (process.env.npm_execpath) candidates.push(join(dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  const prefix = dirname(dirname(process.execPath));
  candidates.push(join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  candidates.push(join(dirname(process.execPath), 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  try {
    candidates.push(createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js'));
  } catch {}
  for (const c of candidates) if (c && existsSync(c)) return { cmd: process.execPath, pre: [c], where: c };
  const onPath = spawnSync('sh', ['-c', 'command -v node-gyp'], { encoding: 'utf8' });
  if (onPath.status === 0 && onPath.stdout.trim()) return { cmd: onPath.stdout.trim(), pre: [], where: onPath.stdout.trim() };
  return null;
}

const gyp = findNodeGyp();
if (!gyp) fail('node-gyp not found (it ships with npm; install npm, or `npm install -g node-gyp`)');

for (const [tool, pkg] of [
  ['make', 'make'],
  ['g++', 'g++'],
]) {
  if (spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status !== 0)
    fail(`${tool} is missing: install a C++ toolchain (apt-get install ${pkg} / build-essential)`);
}
const python = ['python3', 'python'].find((p) => spawnSync('sh', ['-c', `command -v ${p}`], { stdio: 'ignore' }).status === 0);
if (!python) fail('python3 is missing (node-gyp needs it): apt-get install python3');

// Headers: the prefix of this node (e.g. /usr for /usr/bin/node) when it has
// include/node; this avoids node-gyp trying to download them.
const prefix = dirname(dirname(process.execPath));
const args = [...gyp.pre, 'rebuild', '--directory', here];
if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);
else say(`no headers under ${prefix}/include/node; node-gyp will try its own copy`);
if (process.env.QUICMAP_NATIVE_DEBUG === '1') args.push('--debug');

rmSync(failFile, { force: true });

// The QUIC data path (src/quic.cc: a second addon, quicmap_quic.node, so the
// main one never links ngtcp2/GnuTLS) needs Debian's ngtcp2 0.12 with GnuTLS.
// Without them (or if that part fails to compile) only the main addon is
// built and build/QUIC_UNAVAILABLE.txt says why; the rest is unaffected.
const quicFile = join(buildDir, 'QUIC_UNAVAILABLE.txt');
const QUIC_PKGS = 'apt-get install libngtcp2-dev libngtcp2-crypto-gnutls-dev libgnutls28-dev';
function quicPrerequisites() {
  const headers = ['/usr/include/ngtcp2/ngtcp2.h', '/usr/include/ngtcp2/ngtcp2_crypto_gnutls.h', '/usr/include/gnutls/gnutls.h'];
  const missing = headers.filter((h) => !existsSync(h));
  if (missing.length) return `the QUIC data path needs ngtcp2 0.12 with GnuTLS (${missing.join(', ')} missing): ${QUIC_PKGS}`;
  const v = spawnSync('sh', ['-c', 'pkg-config --modversion libngtcp2 2>/dev/null || sed -n "s/^#define NGTCP2_VERSION \\"\\(.*\\)\\"/\\1/p" /usr/include/ngtcp2/version.h'], { encoding: 'utf8' });
  const version = (v.stdout ?? '').trim().split('\n')[0] ?? '';
  if (!/^0\.12\./.test(version)) return `the QUIC data path is written for ngtcp2 0.12 (Debian bookworm); found ${version || 'an unknown version'}`;
  return undefined;
}

const env = { ...process.env };
// A stale npmrc `nodedir` must not override ours.
delete env.npm_config_nodedir;
function runGyp(withQuic) {
  say(`building with ${gyp.where} (node ${process.version}, ${prefix})${withQuic ? ' with the ngtcp2 QUIC data path' : ''}`);
  return spawnSync(gyp.cmd, args, { cwd: here, stdio: ['ignore', 'pipe', 'pipe'], env: { ...env, QUICMAP_NGTCP2: withQuic ? '1' : '0' }, encoding: 'utf8' });
}
function errorLines(out) {
  return out.split('\n').filter((l) => /error|Error|not found|No such/.test(l)).slice(0, 12);
}

let quicWhy = process.env.QUICMAP_SKIP_QUIC === '1' ? 'skipped because QUICMAP_SKIP_QUIC=1' : quicPrerequisites();
let r = runGyp(!quicWhy);
let out = `${r.stdout ?? ''}${r.stderr ?? ''}`;
if (r.error) fail(`could not run node-gyp: ${r.error.message}`);
if (r.status !== 0 && !quicWhy) {
  // Maybe only the QUIC part is broken: keep everything else.
  quicWhy = `the QUIC data path failed to compile: ${errorLines(out).join(' | ').slice(0, 600) || 'see the build output'}`;
  say(`${quicWhy}; building without it`);
  r = runGyp(false);
  out = `${r.stdout ?? ''}${r.stderr ?? ''}`;
}
if (r.status !== 0) {
  process.stdout.write(out.split('\n').slice(-40).join('\n') + '\n');
  fail(`node-gyp exited ${r.status}: ${errorLines(out).join(' | ').slice(0, 800) || 'see the output above'}`);
}
const built = join(buildDir, 'Release', 'quicmap_native.node');
if (!existsSync(built)) fail(`node-gyp succeeded but ${built} is missing`);
const quicBuilt = join(buildDir, 'Release', 'quicmap_quic.node');
if (!quicWhy && !existsSync(quicBuilt)) quicWhy = `node-gyp succeeded but ${quicBuilt} is missing`;
if (quicWhy) {
  writeFileSync(quicFile, quicWhy + '\n');
  say(`built ${built} without QUIC: ${quicWhy}`);
} else {
  rmSync(quicFile, { force: true });
  say(`built ${built} and ${quicBuilt} (the ngtcp2 QUIC data path)`);
}
