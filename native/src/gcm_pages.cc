// AES-256-GCM over the pages of a chunk, for encrypted remote RAM
// (p2p/ram/seal.ts). Each page (segment) of a chunk is its own AEAD message
// with its own tag, so a 4 KiB read of a chunk fetched from a storage peer
// opens 4 KiB, not the whole chunk.
//
// Why native: Node's createDecipheriv costs about 4.5 us per message before
// any byte is processed (measured: 5.9 us for 4 KiB, 19.4 us for 64 KiB), so
// per-page messages in JavaScript would make a whole-chunk open five times
// slower. Here one EVP context per direction keeps the key schedule and a
// message costs an IV reset plus the bytes.
//
// The EVP functions are Node's own OpenSSL, looked up with dlsym at first
// use rather than linked: the addon then loads (everything else in it keeps
// working) even in a Node built without exported OpenSSL symbols, where
// `GcmPages` throws ENOTSUP and seal.ts falls back to node:crypto. Only
// EVP calls whose ABI is the same in every OpenSSL 3.x are used (Node 20
// ships 3.0, Node 24 3.5).
//
// Message layout (seal.ts has the JavaScript twin and the tests hold the
// two to the same bytes): nonce = chunk index (u32 BE) || segment (u16 BE)
// || version (u48 BE); associated data = `aad` (from JS: tag, region id,
// index, version, segment count) || segment (u16 BE).
#include <dlfcn.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace qm {
namespace {

using Ctx = void;
using Cipher = void;
struct Evp {
  Ctx* (*ctxNew)();
  void (*ctxFree)(Ctx*);
  const Cipher* (*aes256gcm)();
  int (*encInit)(Ctx*, const Cipher*, void*, const unsigned char*, const unsigned char*);
  int (*decInit)(Ctx*, const Cipher*, void*, const unsigned char*, const unsigned char*);
  int (*encUpdate)(Ctx*, unsigned char*, int*, const unsigned char*, int);
  int (*decUpdate)(Ctx*, unsigned char*, int*, const unsigned char*, int);
  int (*encFinal)(Ctx*, unsigned char*, int*);
  int (*decFinal)(Ctx*, unsigned char*, int*);
  int (*ctrl)(Ctx*, int, int, void*);
  bool ok = false;
};

// <openssl/evp.h>
constexpr int kCtrlGcmGetTag = 0x10;
constexpr int kCtrlGcmSetTag = 0x11;
constexpr size_t kTag = 16;
constexpr size_t kMaxAad = 128;

const Evp& LoadEvp() {
  static Evp evp = [] {
    Evp e{};
    auto sym = [](const char* name) { return dlsym(RTLD_DEFAULT, name); };
    e.ctxNew = reinterpret_cast<Ctx* (*)()>(sym("EVP_CIPHER_CTX_new"));
    e.ctxFree = reinterpret_cast<void (*)(Ctx*)>(sym("EVP_CIPHER_CTX_free"));
    e.aes256gcm = reinterpret_cast<const Cipher* (*)()>(sym("EVP_aes_256_gcm"));
    e.encInit = reinterpret_cast<decltype(e.encInit)>(sym("EVP_EncryptInit_ex"));
    e.decInit = reinterpret_cast<decltype(e.decInit)>(sym("EVP_DecryptInit_ex"));
    e.encUpdate = reinterpret_cast<decltype(e.encUpdate)>(sym("EVP_EncryptUpdate"));
    e.decUpdate = reinterpret_cast<decltype(e.decUpdate)>(sym("EVP_DecryptUpdate"));
    e.encFinal = reinterpret_cast<decltype(e.encFinal)>(sym("EVP_EncryptFinal_ex"));
    e.decFinal = reinterpret_cast<decltype(e.decFinal)>(sym("EVP_DecryptFinal_ex"));
    e.ctrl = reinterpret_cast<decltype(e.ctrl)>(sym("EVP_CIPHER_CTX_ctrl"));
    e.ok = e.ctxNew && e.ctxFree && e.aes256gcm && e.encInit && e.decInit && e.encUpdate && e.decUpdate && e.encFinal &&
           e.decFinal && e.ctrl;
    return e;
  }();
  return evp;
}

void PutU16(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 8);
  p[1] = uint8_t(v);
}

struct Bytes {
  uint8_t* data;
  size_t len;
};

Bytes BytesOf(const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a Uint8Array");
  auto a = v.As<Napi::Uint8Array>();
  return {a.Data(), a.ByteLength()};
}

class GcmPages : public Napi::ObjectWrap<GcmPages> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "GcmPages",
                       {InstanceMethod<&GcmPages::Seal>("seal"), InstanceMethod<&GcmPages::Open>("open"),
                        InstanceMethod<&GcmPages::Close>("close")});
  }

  // new GcmPages(key: Uint8Array(32), segmentSize)
  explicit GcmPages(const Napi::CallbackInfo& info) : Napi::ObjectWrap<GcmPages>(info) {
    Napi::Env env = info.Env();
    const Evp& evp = LoadEvp();
    if (!evp.ok) ThrowErrno(env, ENOTSUP, "GcmPages: this Node does not export OpenSSL's EVP functions");
    Bytes key = BytesOf(info[0], "key");
    if (key.len != 32) throw Napi::RangeError::New(env, "GcmPages: the key is 32 bytes");
    seg_ = ToU64(info[1]);
    if (seg_ < 16 || seg_ > (1u << 20)) throw Napi::RangeError::New(env, "GcmPages: segment size out of range");
    enc_ = evp.ctxNew();
    dec_ = evp.ctxNew();
    if (!enc_ || !dec_ || evp.encInit(enc_, evp.aes256gcm(), nullptr, key.data, nullptr) != 1 ||
        evp.decInit(dec_, evp.aes256gcm(), nullptr, key.data, nullptr) != 1) {
      Free();
      ThrowErrno(env, EIO, "GcmPages: EVP init");
    }
    scratch_.resize(seg_);
  }

  ~GcmPages() override { Free(); }

 private:
  void Free() {
    const Evp& evp = LoadEvp();
    if (enc_) evp.ctxFree(enc_);
    if (dec_) evp.ctxFree(dec_);
    enc_ = dec_ = nullptr;
  }

  void Check(Napi::Env env) {
    if (!enc_) throw Napi::Error::New(env, "GcmPages: closed");
  }

  // The nonce and associated data of one segment.
  static void Header(uint32_t index, uint64_t version, uint32_t s, const Bytes& aad, uint8_t iv[12], uint8_t* ad) {
    iv[0] = uint8_t(index >> 24);
    iv[1] = uint8_t(index >> 16);
    iv[2] = uint8_t(index >> 8);
    iv[3] = uint8_t(index);
    PutU16(iv + 4, s);
    for (int i = 0; i < 6; i++) iv[6 + i] = uint8_t(version >> (8 * (5 - i)));
    memcpy(ad, aad.data, aad.len);
    PutU16(ad + aad.len, s);
  }

  struct Args {
    uint32_t index;
    uint64_t version;
    Bytes aad;
  };

  Args Common(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Check(env);
    Args a{uint32_t(ToU64(info[0])), ToU64(info[1]), BytesOf(info[2], "aad")};
    if (a.version >= (uint64_t(1) << 48)) throw Napi::RangeError::New(env, "GcmPages: version beyond 48 bits");
    if (a.aad.len + 2 > kMaxAad) throw Napi::RangeError::New(env, "GcmPages: associated data too long");
    return a;
  }

  // seal(index, version, aad, plain, ct, tags): ct (plain's length) and tags (16 per segment) are written.
  Napi::Value Seal(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Args a = Common(info);
    Bytes plain = BytesOf(info[3], "plain"), ct = BytesOf(info[4], "ct"), tags = BytesOf(info[5], "tags");
    size_t n = (plain.len + seg_ - 1) / seg_;
    if (ct.len != plain.len || tags.len != n * kTag || n > 0xffff) throw Napi::RangeError::New(env, "GcmPages.seal: sizes");
    const Evp& evp = LoadEvp();
    uint8_t iv[12], ad[kMaxAad];
    for (size_t s = 0; s < n; s++) {
      size_t off = s * seg_, len = std::min(seg_, plain.len - off);
      Header(a.index, a.version, uint32_t(s), a.aad, iv, ad);
      int outl = 0;
      if (evp.encInit(enc_, nullptr, nullptr, nullptr, iv) != 1 || evp.encUpdate(enc_, nullptr, &outl, ad, int(a.aad.len + 2)) != 1 ||
          evp.encUpdate(enc_, ct.data + off, &outl, plain.data + off, int(len)) != 1 ||
          evp.encFinal(enc_, ct.data + off + outl, &outl) != 1 || evp.ctrl(enc_, kCtrlGcmGetTag, kTag, tags.data + s * kTag) != 1) {
        ThrowErrno(env, EIO, "GcmPages.seal");
      }
    }
    return env.Undefined();
  }

  // open(index, version, aad, data, tags, first, count, done) -> -1, or the
  // first segment that failed. `data` holds ciphertext where done[s] == 0;
  // each segment in [first, first + count) not done yet is opened into a
  // scratch page, and only once its tag checked is it copied over its
  // ciphertext and marked done, so `data` never holds unauthenticated bytes
  // in a segment marked done (and a failed segment keeps its ciphertext).
  Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Args a = Common(info);
    Bytes data = BytesOf(info[3], "data"), tags = BytesOf(info[4], "tags");
    size_t first = ToU64(info[5]), count = ToU64(info[6]);
    Bytes done = BytesOf(info[7], "done");
    size_t n = (data.len + seg_ - 1) / seg_;
    if (tags.len != n * kTag || done.len != n || first + count > n) throw Napi::RangeError::New(env, "GcmPages.open: sizes");
    const Evp& evp = LoadEvp();
    uint8_t iv[12], ad[kMaxAad];
    for (size_t s = first; s < first + count; s++) {
      if (done.data[s]) continue;
      size_t off = s * seg_, len = std::min(seg_, data.len - off);
      Header(a.index, a.version, uint32_t(s), a.aad, iv, ad);
      int outl = 0;
      bool ok = evp.decInit(dec_, nullptr, nullptr, nullptr, iv) == 1 && evp.decUpdate(dec_, nullptr, &outl, ad, int(a.aad.len + 2)) == 1 &&
                evp.decUpdate(dec_, scratch_.data(), &outl, data.data + off, int(len)) == 1 &&
                evp.ctrl(dec_, kCtrlGcmSetTag, kTag, tags.data + s * kTag) == 1 && evp.decFinal(dec_, scratch_.data() + outl, &outl) == 1;
      if (!ok) return Napi::Number::New(env, double(s));
      memcpy(data.data + off, scratch_.data(), len);
      done.data[s] = 1;
    }
    return Napi::Number::New(env, -1);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Free();
    memset(scratch_.data(), 0, scratch_.size());
    return info.Env().Undefined();
  }

  Ctx* enc_ = nullptr;
  Ctx* dec_ = nullptr;
  size_t seg_ = 0;
  std::vector<uint8_t> scratch_;
};

Napi::Value GcmPagesAvailable(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), LoadEvp().ok);
}

}  // namespace

void GcmPagesInit(Napi::Env env, Napi::Object exports) {
  exports.Set("GcmPages", GcmPages::Define(env));
  exports.Set("gcmPagesAvailable", Napi::Function::New(env, GcmPagesAvailable, "gcmPagesAvailable"));
}

}  // namespace qm
