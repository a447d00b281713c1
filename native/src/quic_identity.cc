// libp2p-TLS identity binding for the ngtcp2 QUIC path, with GnuTLS: the
// same scheme the @chainsafe/libp2p-quic side uses (libp2p TLS spec), so a
// certificate proves an Ed25519 node key:
//   SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature OCTET STRING }
// in extension 1.3.6.1.4.1.53594.1.1, where publicKey is the libp2p protobuf
// PublicKey { Type = Ed25519 (1), Data = 32 bytes } and signature is the
// Ed25519 signature of "libp2p-tls-handshake:" || the certificate's
// SubjectPublicKeyInfo (DER).
#include "quic.h"

#include <gnutls/abstract.h>
#include <gnutls/crypto.h>
#include <gnutls/x509.h>

#include <cstring>
#include <ctime>
#include <vector>

namespace qm {

namespace {

std::string Gerr(const char* what, int rv) { return std::string(what) + ": " + gnutls_strerror(rv); }

// DER length prefix (definite form).
void PutLen(std::vector<uint8_t>& out, size_t n) {
  if (n < 128) {
    out.push_back(static_cast<uint8_t>(n));
  } else if (n < 256) {
    out.push_back(0x81);
    out.push_back(static_cast<uint8_t>(n));
  } else {
    out.push_back(0x82);
    out.push_back(static_cast<uint8_t>(n >> 8));
    out.push_back(static_cast<uint8_t>(n));
  }
}

void PutTlv(std::vector<uint8_t>& out, uint8_t tag, const uint8_t* p, size_t n) {
  out.push_back(tag);
  PutLen(out, n);
  out.insert(out.end(), p, p + n);
}

// One DER TLV at p[0..end); returns false on malformed input.
bool GetTlv(const uint8_t*& p, const uint8_t* end, uint8_t tag, const uint8_t** val, size_t* len) {
  if (end - p < 2 || p[0] != tag) return false;
  size_t n = p[1];
  const uint8_t* q = p + 2;
  if (n & 0x80) {
    size_t k = n & 0x7f;
    if (k == 0 || k > 2 || static_cast<size_t>(end - q) < k) return false;
    n = 0;
    for (size_t i = 0; i < k; i++) n = (n << 8) | *q++;
  }
  if (static_cast<size_t>(end - q) < n) return false;
  *val = q;
  *len = n;
  p = q + n;
  return true;
}

bool ReadVarint(const uint8_t*& p, const uint8_t* end, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64 && p < end; shift += 7) {
    uint8_t b = *p++;
    *v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

// libp2p PublicKey protobuf -> Ed25519 key; false unless it is one.
bool ParseLibp2pKey(const uint8_t* p, size_t n, uint8_t* key) {
  const uint8_t* end = p + n;
  uint64_t type = ~0ull;
  bool have = false;
  while (p < end) {
    uint64_t tagv;
    if (!ReadVarint(p, end, &tagv)) return false;
    uint64_t field = tagv >> 3, wire = tagv & 7;
    if (wire == 0) {
      uint64_t v;
      if (!ReadVarint(p, end, &v)) return false;
      if (field == 1) type = v;
    } else if (wire == 2) {
      uint64_t len;
      if (!ReadVarint(p, end, &len) || static_cast<uint64_t>(end - p) < len) return false;
      if (field == 2) {
        if (len != 32) return false;
        std::memcpy(key, p, 32);
        have = true;
      }
      p += len;
    } else {
      return false;
    }
  }
  return have && type == 1;
}

struct Datum {
  gnutls_datum_t d{nullptr, 0};
  ~Datum() { gnutls_free(d.data); }
};

// SubjectPublicKeyInfo (DER) of a public key.
std::string Spki(gnutls_pubkey_t pk, std::vector<uint8_t>* out) {
  Datum d;
  int rv = gnutls_pubkey_export2(pk, GNUTLS_X509_FMT_DER, &d.d);
  if (rv < 0) return Gerr("gnutls_pubkey_export2", rv);
  out->assign(d.d.data, d.d.data + d.d.size);
  return "";
}

}  // namespace

std::string QuicMakeCredentials(const uint8_t* seed, const uint8_t* pub, gnutls_certificate_credentials_t* out) {
  std::string err;
  gnutls_privkey_t idkey = nullptr;
  gnutls_x509_privkey_t certkey = nullptr;
  gnutls_privkey_t certpriv = nullptr;
  gnutls_pubkey_t certpub = nullptr;
  gnutls_x509_crt_t crt = nullptr;
  gnutls_certificate_credentials_t cred = nullptr;
  int rv;
  do {
    // The node's identity key signs the certificate key.
    gnutls_datum_t x{const_cast<uint8_t*>(pub), 32}, k{const_cast<uint8_t*>(seed), 32};
    if ((rv = gnutls_privkey_init(&idkey)) < 0) { err = Gerr("gnutls_privkey_init", rv); break; }
    if ((rv = gnutls_privkey_import_ecc_raw(idkey, GNUTLS_ECC_CURVE_ED25519, &x, nullptr, &k)) < 0) { err = Gerr("import Ed25519 identity", rv); break; }
    // A fresh certificate key per endpoint (libp2p: any key the TLS stack signs with).
    if ((rv = gnutls_x509_privkey_init(&certkey)) < 0) { err = Gerr("gnutls_x509_privkey_init", rv); break; }
    if ((rv = gnutls_x509_privkey_generate(certkey, GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0)) < 0) { err = Gerr("generate P-256 key", rv); break; }
    if ((rv = gnutls_privkey_init(&certpriv)) < 0) { err = Gerr("gnutls_privkey_init", rv); break; }
    if ((rv = gnutls_privkey_import_x509(certpriv, certkey, 0)) < 0) { err = Gerr("gnutls_privkey_import_x509", rv); break; }
    if ((rv = gnutls_pubkey_init(&certpub)) < 0) { err = Gerr("gnutls_pubkey_init", rv); break; }
    if ((rv = gnutls_pubkey_import_privkey(certpub, certpriv, 0, 0)) < 0) { err = Gerr("gnutls_pubkey_import_privkey", rv); break; }
    std::vector<uint8_t> msg(kLibp2pSigPrefix, kLibp2pSigPrefix + std::strlen(kLibp2pSigPrefix));
    std::vector<uint8_t> spki;
    if (!(err = Spki(certpub, &spki)).empty()) break;
    msg.insert(msg.end(), spki.begin(), spki.end());
    Datum sig;
    gnutls_datum_t m{msg.data(), static_cast<unsigned>(msg.size())};
    if ((rv = gnutls_privkey_sign_data2(idkey, GNUTLS_SIGN_EDDSA_ED25519, 0, &m, &sig.d)) < 0) { err = Gerr("sign certificate key", rv); break; }
    uint8_t proto[36] = {0x08, 0x01, 0x12, 0x20};
    std::memcpy(proto + 4, pub, 32);
    std::vector<uint8_t> inner, ext;
    PutTlv(inner, 0x04, proto, sizeof proto);
    PutTlv(inner, 0x04, sig.d.data, sig.d.size);
    PutTlv(ext, 0x30, inner.data(), inner.size());

    if ((rv = gnutls_x509_crt_init(&crt)) < 0) { err = Gerr("gnutls_x509_crt_init", rv); break; }
    gnutls_x509_crt_set_version(crt, 3);
    uint8_t serial[16];
    gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof serial);
    serial[0] &= 0x7f;  // positive INTEGER
    gnutls_x509_crt_set_serial(crt, serial, sizeof serial);
    time_t now = time(nullptr);
    gnutls_x509_crt_set_activation_time(crt, now - 3600);
    gnutls_x509_crt_set_expiration_time(crt, now + 100LL * 365 * 24 * 3600);
    if ((rv = gnutls_x509_crt_set_key(crt, certkey)) < 0) { err = Gerr("gnutls_x509_crt_set_key", rv); break; }
    // Critical, as libp2p's implementations mark it.
    if ((rv = gnutls_x509_crt_set_extension_by_oid(crt, kLibp2pOid, ext.data(), ext.size(), 1)) < 0) { err = Gerr("set libp2p extension", rv); break; }
    if ((rv = gnutls_x509_crt_privkey_sign(crt, crt, certpriv, GNUTLS_DIG_SHA256, 0)) < 0) { err = Gerr("self-sign certificate", rv); break; }
    if ((rv = gnutls_certificate_allocate_credentials(&cred)) < 0) { err = Gerr("gnutls_certificate_allocate_credentials", rv); break; }
    if ((rv = gnutls_certificate_set_x509_key(cred, &crt, 1, certkey)) < 0) { err = Gerr("gnutls_certificate_set_x509_key", rv); break; }
  } while (false);
  if (crt) gnutls_x509_crt_deinit(crt);
  if (certpub) gnutls_pubkey_deinit(certpub);
  if (certpriv) gnutls_privkey_deinit(certpriv);
  if (certkey) gnutls_x509_privkey_deinit(certkey);
  if (idkey) gnutls_privkey_deinit(idkey);
  if (!err.empty()) {
    if (cred) gnutls_certificate_free_credentials(cred);
    return err;
  }
  *out = cred;
  return "";
}

// The certificate's signature over its own TBSCertificate, by its own key.
std::string CheckSelfSignature(gnutls_x509_crt_t crt, const gnutls_datum_t& der) {
  const uint8_t *p = der.data, *end = der.data + der.size, *body, *tbsv;
  size_t bodylen, tbslen;
  if (!GetTlv(p, end, 0x30, &body, &bodylen)) return "malformed peer certificate";
  const uint8_t* tbsStart = body;
  p = body;
  if (!GetTlv(p, body + bodylen, 0x30, &tbsv, &tbslen)) return "malformed peer certificate";
  gnutls_datum_t tbs{const_cast<uint8_t*>(tbsStart), static_cast<unsigned>(p - tbsStart)};
  uint8_t sigbuf[1024];
  size_t siglen = sizeof sigbuf;
  if (gnutls_x509_crt_get_signature(crt, reinterpret_cast<char*>(sigbuf), &siglen) < 0) return "peer certificate has no readable signature";
  int algo = gnutls_x509_crt_get_signature_algorithm(crt);
  if (algo < 0) return "peer certificate signature algorithm unknown";
  gnutls_pubkey_t pub = nullptr;
  std::string err;
  gnutls_datum_t sig{sigbuf, static_cast<unsigned>(siglen)};
  if (gnutls_pubkey_init(&pub) < 0 || gnutls_pubkey_import_x509(pub, crt, 0) < 0)
    err = "peer certificate key unreadable";
  else if (gnutls_pubkey_verify_data2(pub, static_cast<gnutls_sign_algorithm_t>(algo), 0, &tbs, &sig) < 0)
    err = "peer certificate's self-signature does not verify";
  if (pub) gnutls_pubkey_deinit(pub);
  return err;
}

std::string QuicVerifyPeer(gnutls_session_t session, uint8_t* key) {
  unsigned n = 0;
  const gnutls_datum_t* certs = gnutls_certificate_get_peers(session, &n);
  if (!certs || n == 0) return "peer sent no certificate";
  if (n != 1) return "peer sent a certificate chain (libp2p allows exactly one certificate)";
  return QuicVerifyCertificate(certs[0], key);
}

std::string QuicVerifyCertificate(const gnutls_datum_t& der, uint8_t* key) {
  const gnutls_datum_t* certs = &der;
  gnutls_x509_crt_t crt = nullptr;
  gnutls_pubkey_t certpub = nullptr, idpub = nullptr;
  std::string err;
  int rv;
  do {
    if ((rv = gnutls_x509_crt_init(&crt)) < 0 || (rv = gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER)) < 0) { err = Gerr("peer certificate", rv); break; }
    // Self-signed and valid now. The libp2p extension is critical and unknown to GnuTLS: that flag is expected.
    unsigned status = 0;
    if ((rv = gnutls_x509_crt_verify(crt, &crt, 1, GNUTLS_VERIFY_DISABLE_CA_SIGN, &status)) < 0) { err = Gerr("verify peer certificate", rv); break; }
    status &= ~static_cast<unsigned>(GNUTLS_CERT_UNKNOWN_CRIT_EXTENSIONS);
    if (status & ~static_cast<unsigned>(GNUTLS_CERT_INVALID)) { err = "peer certificate is not a valid self-signed certificate (status " + std::to_string(status) + ")"; break; }
    if (status) { err = "peer certificate is not a valid self-signed certificate"; break; }
    // GnuTLS trusts a certificate found in the trusted list as it is, so the
    // verify above never checks the self-signature: check it here
    // (crypto/peer-cert.ts does; test/transport/ngtcp2-identity found the difference).
    if (!(err = CheckSelfSignature(crt, certs[0])).empty()) break;
    Datum ext;
    unsigned critical = 0;
    if ((rv = gnutls_x509_crt_get_extension_by_oid2(crt, kLibp2pOid, 0, &ext.d, &critical)) < 0) { err = "peer certificate lacks the libp2p key extension"; break; }
    const uint8_t *p = ext.d.data, *end = p + ext.d.size, *seq, *pk, *sig;
    size_t seqlen, pklen, siglen;
    if (!GetTlv(p, end, 0x30, &seq, &seqlen)) { err = "malformed libp2p extension"; break; }
    p = seq;
    end = seq + seqlen;
    if (!GetTlv(p, end, 0x04, &pk, &pklen) || !GetTlv(p, end, 0x04, &sig, &siglen)) { err = "malformed libp2p extension"; break; }
    uint8_t k[32];
    if (!ParseLibp2pKey(pk, pklen, k)) { err = "peer identity is not an Ed25519 key"; break; }
    if ((rv = gnutls_pubkey_init(&certpub)) < 0 || (rv = gnutls_pubkey_import_x509(certpub, crt, 0)) < 0) { err = Gerr("peer certificate key", rv); break; }
    std::vector<uint8_t> msg(kLibp2pSigPrefix, kLibp2pSigPrefix + std::strlen(kLibp2pSigPrefix)), spki;
    if (!(err = Spki(certpub, &spki)).empty()) break;
    msg.insert(msg.end(), spki.begin(), spki.end());
    gnutls_datum_t x{k, 32}, m{msg.data(), static_cast<unsigned>(msg.size())}, s{const_cast<uint8_t*>(sig), static_cast<unsigned>(siglen)};
    if ((rv = gnutls_pubkey_init(&idpub)) < 0 || (rv = gnutls_pubkey_import_ecc_raw(idpub, GNUTLS_ECC_CURVE_ED25519, &x, nullptr)) < 0) { err = Gerr("peer identity key", rv); break; }
    if (gnutls_pubkey_verify_data2(idpub, GNUTLS_SIGN_EDDSA_ED25519, 0, &m, &s) < 0) { err = "the peer's identity signature over its certificate key does not verify"; break; }
    std::memcpy(key, k, 32);
  } while (false);
  if (idpub) gnutls_pubkey_deinit(idpub);
  if (certpub) gnutls_pubkey_deinit(certpub);
  if (crt) gnutls_x509_crt_deinit(crt);
  return err;
}

}  // namespace qm
