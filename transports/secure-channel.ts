/**
 * An authenticated, encrypted channel over any byte Duplex: node:tls 1.3
 * (OpenSSL), mutual, each side proving its Ed25519 identity with the libp2p
 * certificate binding (crypto/peer-cert.ts). Used by the TCP transport over
 * its sockets, and by anything that wants an end-to-end channel through
 * another stream (e.g. a relayed stream wrapped with `byteStreamDuplex`).
 *
 * node:tls has no certificate callback during the handshake, so certificate
 * chain checks are off (`rejectUnauthorized: false`: the certificates are
 * self-signed by design) and our check runs the moment the handshake
 * completes ('secureConnect' / 'secure'), before any application byte is
 * read or written; a failed check destroys the socket. Consequences: the
 * client's certificate (its identity) reaches whichever server answered,
 * encrypted but before the client checked that server; a refused client
 * sees the server close right after the handshake.
 *
 * Passing a net.Socket keeps OpenSSL on the socket's native handle (no JS
 * stream in between); any other Duplex works through Node's JS stream shim.
 */
import { TLSSocket, connect as tlsConnect, createSecureContext, type SecureContext } from 'node:tls';
import { constants } from 'node:crypto';
import { Duplex } from 'node:stream';
import type { Identity } from '../crypto/identity.ts';
import { checkPeerKey, createPeerCertificate, identityFromCertificate } from '../crypto/peer-cert.ts';
import { QuicmapError } from '../base/errors.ts';
import type { ByteStream } from './transport.ts';

export type ChannelRole = 'client' | 'server';

export interface SecureChannel {
  /** The TLS socket: write and read plaintext. Paused; nothing was read from it yet. */
  readonly socket: TLSSocket;
  /** The Ed25519 key the peer proved. */
  readonly remotePublicKey: Uint8Array;
}

export interface SecureChannelOptions {
  /** The handshake (and identity check) must complete within this. Default 5 000 ms. */
  timeoutMs?: number;
}

const ALPN = 'quicmap/1';
/** TLS 1.3 suites in order of preference (exported for the node:tls reference in the benchmark). */
export const TLS_CIPHERSUITES = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';
const contexts = new WeakMap<Identity, SecureContext>();

/** One certificate and TLS context per identity (the spec allows reusing them). */
function contextFor(identity: Identity): SecureContext {
  let ctx = contexts.get(identity);
  if (!ctx) {
    const { keyPem, certPem } = createPeerCertificate(identity);
    ctx = createSecureContext({
      key: keyPem,
      cert: certPem,
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
      // AES-128-GCM first: ~30 % cheaper than OpenSSL's default AES-256-GCM here, and a
      // mandatory TLS 1.3 suite; the others stay acceptable.
      ciphers: TLS_CIPHERSUITES,
      // No resumption: every connection proves both identities afresh.
      secureOptions: constants.SSL_OP_NO_TICKET,
    });
    contexts.set(identity, ctx);
  }
  return ctx;
}

/** A socket error during the TLS handshake or on the channel, typed. */
export function tlsError(e: Error, what: string): QuicmapError {
  if (e instanceof QuicmapError) return e;
  const code = (e as NodeJS.ErrnoException).code ?? '';
  // First: a peer that went away is not a protocol failure, even where node's message mentions TLS
  // ("Client network socket disconnected before secure TLS connection was established", ECONNRESET).
  // EPROTO is final for a mount (a refusal); a lost connection is redialled.
  if (code === 'ECONNRESET' || code === 'EPIPE') return new QuicmapError('ESHUTDOWN', `${what}: connection lost (${e.message})`, { cause: e });
  if (code.startsWith('ERR_SSL') || /ssl|tls|decrypt|bad record mac|alert/i.test(e.message)) {
    return new QuicmapError('EPROTO', `${what}: TLS record authentication or protocol failure (${e.message})`, { cause: e });
  }
  return new QuicmapError('EIO', `${what}: ${e.message}`, { cause: e });
}

/**
 * Run TLS 1.3 over `duplex` as `role`, prove `identity`, and check the peer:
 * a client names the key it expects (`expected`), a server passes null and
 * accepts any proven key. Rejects with EACCES (wrong or missing identity),
 * EPROTO (not TLS 1.3, broken handshake), ESHUTDOWN (the peer went away
 * during the handshake), ETIMEDOUT or EIO; the duplex is destroyed then.
 */
export function secureDuplex(duplex: Duplex, identity: Identity, expected: Uint8Array | null, role: ChannelRole, opts: SecureChannelOptions = {}): Promise<SecureChannel> {
  const timeoutMs = opts.timeoutMs ?? 5_000;
  const secureContext = contextFor(identity);
  const socket =
    role === 'client'
      ? tlsConnect({ socket: duplex, secureContext, rejectUnauthorized: false, ALPNProtocols: [ALPN] })
      : new TLSSocket(duplex, { isServer: true, secureContext, requestCert: true, rejectUnauthorized: false, ALPNProtocols: [ALPN] });
  // Nothing may be read before the identity check; the caller resumes.
  socket.pause();
  return new Promise<SecureChannel>((resolve, reject) => {
    let done = false;
    const fail = (e: QuicmapError) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      duplex.destroy();
      reject(e);
    };
    const timer = setTimeout(() => fail(new QuicmapError('ETIMEDOUT', `TLS handshake not done within ${timeoutMs} ms`)), timeoutMs);
    const onError = (e: Error) => fail(tlsError(e, 'TLS handshake'));
    const onClose = () => fail(new QuicmapError('ESHUTDOWN', 'peer closed the connection during the TLS handshake'));
    socket.on('error', onError);
    // A TLSSocket made without a tls.Server reports server-side TLS errors
    // only as the internal '_tlsError' event until control is released.
    if (role === 'server') socket.on('_tlsError', onError);
    socket.on('close', onClose);
    socket.once(role === 'client' ? 'secureConnect' : 'secure', () => {
      if (done) return;
      try {
        if (socket.getProtocol() !== 'TLSv1.3') throw new QuicmapError('EPROTO', `peer negotiated ${socket.getProtocol()}, not TLSv1.3`);
        // Not some other TLS protocol that happens to reach this port (or this one reaching another).
        if (socket.alpnProtocol !== ALPN) throw new QuicmapError('EPROTO', `peer did not negotiate ALPN ${ALPN}`);
        const cert = socket.getPeerX509Certificate();
        const key = checkPeerKey(cert ? identityFromCertificate(cert.raw) : undefined, expected, 'TLS');
        done = true;
        clearTimeout(timer);
        socket.off('error', onError);
        socket.off('_tlsError', onError);
        socket.off('close', onClose);
        if (role === 'server') releaseControl(socket);
        resolve({ socket, remotePublicKey: key });
      } catch (e) {
        fail(e instanceof QuicmapError ? e : new QuicmapError('EACCES', `TLS: ${(e as Error).message}`, { cause: e }));
      }
    });
  });
}

/**
 * From now on report TLS errors of a server-side socket as 'error', as
 * tls.Server does once a handshake is done (`_releaseControl`, internal since
 * Node 0.11); if that is gone, forward '_tlsError' by hand.
 */
function releaseControl(socket: TLSSocket): void {
  const s = socket as TLSSocket & { _releaseControl?: () => boolean };
  if (typeof s._releaseControl === 'function') s._releaseControl();
  else socket.on('_tlsError', (e: Error) => socket.emit('error', e));
}

/**
 * A ByteStream (e.g. a relayed stream) as a node Duplex, so `secureDuplex`
 * can run over it. Reads pull from the stream as the Duplex asks for data;
 * end() half-closes; destroy() resets.
 */
export function byteStreamDuplex(stream: ByteStream): Duplex {
  let reading = false;
  let readEnded = false;
  let writeEnded = false;
  return new Duplex({
    read() {
      if (reading) return;
      reading = true;
      const pull = (): void => {
        stream.read().then(
          (chunk) => {
            if (chunk === null) {
              reading = false;
              readEnded = true;
              this.push(null);
            } else if (this.push(chunk)) pull();
            else reading = false;
          },
          (e: Error) => this.destroy(e),
        );
      };
      pull();
    },
    write(chunk: Buffer, _enc, cb) {
      stream.write(chunk).then(() => cb(), cb);
    },
    writev(chunks, cb) {
      stream.write(chunks.map((c) => c.chunk as Buffer)).then(() => cb(), cb);
    },
    final(cb) {
      stream.closeWrite().then(() => {
        writeEnded = true;
        cb();
      }, cb);
    },
    destroy(err, cb) {
      // A clean end on both sides needs no reset (autoDestroy lands here too).
      if (err || !readEnded || !writeEnded) stream.reset(err ?? undefined);
      cb(err);
    },
  });
}
