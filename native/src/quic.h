// Shared declarations of the ngtcp2 QUIC data path (quic.cc) and its
// libp2p-TLS identity binding (quic_identity.cc), the separate addon
// quicmap_quic.node. Built only when the Debian packages libngtcp2-dev,
// libngtcp2-crypto-gnutls-dev and libgnutls28-dev are present (build.mjs);
// otherwise build/QUIC_UNAVAILABLE.txt says why.
#pragma once
#include <gnutls/gnutls.h>

#include <cstdint>
#include <string>

namespace qm {

// The libp2p TLS certificate extension (1.3.6.1.4.1.53594.1.1) and the
// prefix of what the identity key signs.
constexpr const char* kLibp2pOid = "1.3.6.1.4.1.53594.1.1";
constexpr const char* kLibp2pSigPrefix = "libp2p-tls-handshake:";

// Certificate credentials for an Ed25519 identity (32-byte seed and public
// key): a fresh ECDSA P-256 certificate key, a self-signed certificate that
// carries the identity's libp2p public key and its signature over the
// certificate key. Returns "" on success or what failed.
std::string QuicMakeCredentials(const uint8_t* seed, const uint8_t* pub, gnutls_certificate_credentials_t* out);

// Check the peer's certificate the libp2p way: exactly one self-signed
// certificate, valid now, carrying the extension with an Ed25519 key whose
// signature over the certificate's public key verifies. On success the
// proven key is written to key[32] and "" returned; otherwise the reason.
std::string QuicVerifyPeer(gnutls_session_t session, uint8_t* key);

// The same check on one certificate (DER), for QuicVerifyPeer and for the
// test that holds it to crypto/peer-cert.ts's verdicts.
std::string QuicVerifyCertificate(const gnutls_datum_t& der, uint8_t* key);

}  // namespace qm
