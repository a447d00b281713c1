// QuicEndpoint: a QUIC data path on ngtcp2 0.12 + GnuTLS (Debian's
// libngtcp2-dev, libngtcp2-crypto-gnutls-dev), driven by one native thread
// per endpoint (one UDP socket: a listener, or a dialer's client socket).
//
// The thread owns every ngtcp2 connection of the endpoint: it polls the UDP
// socket (recvmmsg + UDP_GRO), an eventfd for commands from JS and the
// earliest ngtcp2 timer (ppoll, ns precision: pacing), and sends what
// ngtcp2 writes in GSO batches (UDP_SEGMENT). Datagrams are as large as the
// route MTU allows (loopback: ~64 KiB), so one AEAD call and one ngtcp2 packet
// carry tens of KiB.
//
// JS talks to it through commands (connect, open, write, consume, reset,
// close) queued under a mutex, and receives events (ready, closed, opened,
// incoming, data, fin, reset, acked, stream-closed) in batches through one
// thread-safe function call: while JS is busy, events pile up and are taken
// together; consecutive data (and acks) of a stream in one batch are merged
// into one buffer. So JS runs per batch, never per packet.
//
// Flow control: received data goes to JS at once; stream and connection
// credit (MAX_STREAM_DATA/MAX_DATA) is extended only when JS says it consumed
// the bytes, so unread data is bounded by the windows. Sent data stays in
// native buffers until ngtcp2 reports it acknowledged (ngtcp2 retransmits
// from them); JS bounds what it has outstanding by the acked events.
//
// Identity: each side presents a libp2p-TLS certificate (quic_identity.cc);
// a GnuTLS verify callback checks the peer's during the handshake (and the
// dialer checks it is the expected key), so no stream data flows to or from
// a peer whose key was not proven.
// A separate addon (quicmap_quic.node) from quicmap_native.node, so that
// the main addon never depends on libngtcp2/libgnutls being present at load
// time: build.mjs builds this one only where the Debian packages are.
#include <napi.h>

#include "quic.h"

#include <arpa/inet.h>
#include <gnutls/crypto.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstring>
#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

namespace qm {
namespace {

[[noreturn]] void ThrowErrno(Napi::Env env, int err, const std::string& what) {
  auto e = Napi::Error::New(env, what + ": " + strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, what));
  throw e;
}

constexpr size_t kCidLen = 16;
constexpr size_t kRecvSlots = 16;
constexpr size_t kRecvBuf = 65536;
constexpr size_t kMaxQuicPayload = 65527;  // largest max_udp_payload_size QUIC allows
constexpr size_t kGsoLimit = 65000;        // total bytes of one UDP_SEGMENT send
constexpr size_t kMaxVec = 16;
constexpr size_t kCoalesce = 64 * 1024;    // small writes are appended to an unsent chunk up to this
const char kPriority[] =
    "%DISABLE_TLS13_COMPAT_MODE:NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"
    "+CHACHA20-POLY1305:-GROUP-ALL:+GROUP-X25519:+GROUP-SECP256R1:+GROUP-SECP384R1";
const char kAlpn[] = "libp2p";

// QUICMAP_QUIC_DEBUG=1: connection errors and accepts on stderr; QUICMAP_QUIC_LOG=1: ngtcp2's own log.
const bool g_debug = getenv("QUICMAP_QUIC_DEBUG") != nullptr;
const bool g_log = getenv("QUICMAP_QUIC_LOG") != nullptr;

void LogPrintf(void*, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

uint64_t Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * NGTCP2_SECONDS + static_cast<uint64_t>(ts.tv_nsec);
}

enum EvType : uint8_t {
  kEvReady = 1,         // conn handshake done; text = remote address, data = peer key
  kEvClosed = 2,        // conn gone; text = "CODE reason"
  kEvOpened = 3,        // n = token, stream = new local stream
  kEvIncoming = 4,      // stream opened by the peer
  kEvData = 5,          // data
  kEvFin = 6,           // peer finished the stream
  kEvReset = 7,         // peer reset the stream or stopped reading; n = app error code
  kEvAcked = 8,         // n = bytes of this stream acknowledged (sent buffers freed)
  kEvStreamClosed = 9,  // ngtcp2 retired the stream
  kEvCredit = 10,       // n = how many bidirectional streams the peer allows us in total so far
};

struct Event {
  uint8_t type;
  uint32_t conn;
  int64_t stream;
  uint64_t n;
  std::string text;
  std::vector<uint8_t>* data;
};

// Between the loop thread and JS event delivery; outlives both (shared_ptr
// captured by every queued delivery).
struct Shared {
  std::mutex mu;
  std::vector<Event> events;
  uint64_t gen = 0;  // bumped whenever JS takes the batch (invalidates merge indices)
  bool scheduled = false;
  Napi::ThreadSafeFunction tsfn;
};

struct Options {
  bool server = false;
  uint64_t idleNs, handshakeNs, keepAliveNs;
  uint64_t maxStreams, streamWindow, connWindow;
  size_t maxUdp;  // 0: from the route MTU
  bool gso;
  int udpBuf;
  size_t maxPending, maxPendingPerSource, maxConns;
  ngtcp2_cc_algo cc;
};

struct Cmd {
  enum Type { Connect, Open, Write, Consume, Reset, Close } type;
  uint32_t conn = 0;
  int64_t stream = -1;
  uint64_t n = 0;
  bool fin = false;
  std::vector<uint8_t> data;
  sockaddr_storage addr{};
  socklen_t alen = 0;
  uint8_t key[32];
};

struct Stream {
  int64_t id = -1;
  uint64_t token = 0;  // the JS open that made it (local streams)
  // Data not yet acknowledged, in order; ngtcp2 keeps pointers into these
  // until it acks them, so a chunk handed to ngtcp2 never moves.
  std::deque<std::vector<uint8_t>> chunks;
  size_t frontSkip = 0;             // acked bytes at the start of chunks.front()
  size_t curIdx = 0, curSkip = 0;   // first byte not yet handed to ngtcp2
  uint64_t unsent = 0;
  bool finQueued = false, finSent = false, blocked = false, inReady = false, shut = false;
  uint64_t dataGen = ~0ull, ackGen = ~0ull;
  size_t dataIdx = 0, ackIdx = 0;
};

class Endpoint;

struct Conn {
  Endpoint* ep;
  uint32_t id;
  ngtcp2_conn* conn = nullptr;
  gnutls_session_t tls = nullptr;
  ngtcp2_crypto_conn_ref ref;
  sockaddr_storage remote{};
  socklen_t remotelen = 0;
  bool server = false, handshakeDone = false, ready = false, dead = false, counted = false;
  bool haveExpected = false, havePeerKey = false;
  bool statelessReset = false;  // ngtcp2 took a stateless reset from the peer (its DRAINING says no more)
  uint8_t expected[32], peerKey[32];
  std::string authError, closeReason;
  std::unordered_map<int64_t, std::unique_ptr<Stream>> streams;
  std::deque<Stream*> readyq;
  std::deque<uint64_t> opens;
  // Local streams JS already writes to (by token) before ngtcp2 gave them an id.
  std::unordered_map<uint64_t, std::unique_ptr<Stream>> pendingByToken;
  std::unordered_map<uint64_t, int64_t> sidByToken;
  std::vector<std::pair<int64_t, uint64_t>> toShut;  // streams to shut down after the callback
  std::vector<std::string> cids;
  size_t maxUdp = 1200;
  std::string source;               // admission key: IPv4 address, or IPv6 /64
  std::vector<uint8_t> peerCert;    // the peer's certificate (DER), handed to JS with "ready"
};

// The admission key of an address, as base/admission.ts sourceOf: IPv4 as
// is (IPv4-mapped IPv6 too), IPv6 by its /64.
std::string SourceKey(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return std::string(reinterpret_cast<const char*>(&reinterpret_cast<const sockaddr_in*>(&a)->sin_addr), 4);
  auto* b = reinterpret_cast<const sockaddr_in6*>(&a)->sin6_addr.s6_addr;
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(b, mapped, 12) == 0) return std::string(reinterpret_cast<const char*>(b + 12), 4);
  return std::string(reinterpret_cast<const char*>(b), 8) + "/64";
}

std::string CidKey(const uint8_t* p, size_t n) { return std::string(reinterpret_cast<const char*>(p), n); }

std::string FormatAddr(const sockaddr_storage& a) {
  char buf[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (a.ss_family == AF_INET) {
    auto* s = reinterpret_cast<const sockaddr_in*>(&a);
    inet_ntop(AF_INET, &s->sin_addr, buf, sizeof buf);
    port = ntohs(s->sin_port);
    return std::string(buf) + ":" + std::to_string(port);
  }
  auto* s = reinterpret_cast<const sockaddr_in6*>(&a);
  inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof buf);
  port = ntohs(s->sin6_port);
  return "[" + std::string(buf) + "]:" + std::to_string(port);
}

// The largest UDP payload the route to `a` carries without fragmenting.
size_t RoutePayload(const sockaddr_storage& a, socklen_t alen) {
  int fd = socket(a.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 1200;
  size_t out = 1200;
  if (connect(fd, reinterpret_cast<const sockaddr*>(&a), alen) == 0) {
    int mtu = 0;
    socklen_t l = sizeof mtu;
    int rv = a.ss_family == AF_INET ? getsockopt(fd, IPPROTO_IP, IP_MTU, &mtu, &l) : getsockopt(fd, IPPROTO_IPV6, IPV6_MTU, &mtu, &l);
    if (rv == 0 && mtu > 0) {
      long p = mtu - (a.ss_family == AF_INET ? 28 : 48);
      if (p > 1200) out = static_cast<size_t>(p);
    }
  }
  close(fd);
  return std::min(out, kMaxQuicPayload);
}

struct Stats {
  std::atomic<uint64_t> datagramsIn{0}, datagramsOut{0}, sendCalls{0}, recvCalls{0}, bytesOut{0}, bytesIn{0}, dropped{0};
  // Listener admission: handshakes evicted to make room, Initials refused (connection cap), stateless resets sent.
  std::atomic<uint64_t> evicted{0}, refused{0}, resets{0};
  std::atomic<uint64_t> maxDatagramOut{0};
  // Hole-punch datagrams (format below): sent by sendDatagram, received and dropped.
  std::atomic<uint64_t> punchOut{0}, punchIn{0}, punchLimited{0};
};

// A hole-punch datagram: kPunchMagic then at most kPunchMax - 8 bytes. Its
// first byte is 0 (the QUIC fixed bit is clear), so no QUIC endpoint takes it
// for a packet; ours drop it before parsing (IsPunchDatagram).
const uint8_t kPunchMagic[8] = {0x00, 'Q', 'M', 'P', 'U', 'N', 'C', 'H'};
constexpr size_t kPunchMax = 64;
// At most this many punch datagrams a second per endpoint (token bucket,
// burst of the same size): a punch sends a handful, so the endpoint can never
// be turned into a packet source for a flood.
constexpr double kPunchPerSecond = 32;

bool IsPunchDatagram(const uint8_t* p, size_t len) {
  return len >= sizeof kPunchMagic && len <= kPunchMax && std::memcmp(p, kPunchMagic, sizeof kPunchMagic) == 0;
}

class Endpoint {
 public:
  Options o;
  int fd = -1, efd = -1;
  sockaddr_storage local{};
  socklen_t locallen = 0;
  gnutls_certificate_credentials_t cred = nullptr;
  std::shared_ptr<Shared> sh = std::make_shared<Shared>();
  std::thread th;
  std::atomic<bool> stop{false}, wakePending{false};
  std::mutex cmdMu;
  std::vector<Cmd> cmds;
  std::atomic<uint32_t> nextConn{1};
  Stats st;
  bool gsoOk = true;

  // Loop-thread state.
  std::unordered_map<uint32_t, Conn*> conns;
  std::unordered_map<std::string, Conn*> byCid;
  size_t pending = 0;
  // Handshakes in progress per source, oldest first (fair admission, as base/admission.ts).
  std::unordered_map<std::string, std::deque<Conn*>> pendingBySource;
  // Static key of stateless reset tokens, derived from the identity seed so a
  // restarted node resets the connections its previous run had.
  uint8_t resetSecret[32];
  uint64_t resetWindowStart = 0, resetsInWindow = 0;
  std::vector<uint8_t> tx = std::vector<uint8_t>(2 * 65536 + 4096);

  ~Endpoint() {
    if (fd >= 0) close(fd);
    if (efd >= 0) close(efd);
    if (cred) gnutls_certificate_free_credentials(cred);
  }

  // Hole punching: one punch datagram from this endpoint's socket (so it
  // opens the NAT mapping QUIC uses), sent at once from the JS thread
  // (sendto on a UDP socket is safe beside the loop thread's sendmsg).
  // False when over the rate limit or the send failed.
  double punchTokens = kPunchPerSecond;
  uint64_t punchRefilled = 0;
  bool SendPunch(const sockaddr_storage& to, socklen_t tolen, const uint8_t* p, size_t len) {
    uint64_t now = Now();
    if (punchRefilled) punchTokens = std::min(kPunchPerSecond, punchTokens + static_cast<double>(now - punchRefilled) * kPunchPerSecond / NGTCP2_SECONDS);
    punchRefilled = now;
    if (punchTokens < 1) {
      st.punchLimited++;
      return false;
    }
    punchTokens -= 1;
    if (sendto(fd, p, len, 0, reinterpret_cast<const sockaddr*>(&to), tolen) != static_cast<ssize_t>(len)) return false;
    st.punchOut++;
    return true;
  }

  void Command(Cmd&& c) {
    {
      std::lock_guard<std::mutex> lk(cmdMu);
      cmds.push_back(std::move(c));
    }
    Wake();
  }

  void Wake() {
    if (!wakePending.exchange(true)) {
      uint64_t one = 1;
      ssize_t r = write(efd, &one, sizeof one);
      (void)r;
    }
  }

  // ---------------------------------------------------------------- events

  void Push(uint8_t type, Conn* c, int64_t stream, uint64_t n, std::string text = std::string(), std::vector<uint8_t>* data = nullptr) {
    std::lock_guard<std::mutex> lk(sh->mu);
    sh->events.push_back(Event{type, c->id, stream, n, std::move(text), data});
  }

  void PushData(Conn* c, Stream* s, const uint8_t* p, size_t n) {
    std::lock_guard<std::mutex> lk(sh->mu);
    auto& ev = sh->events;
    if (s->dataGen == sh->gen && s->dataIdx < ev.size() && ev[s->dataIdx].type == kEvData && ev[s->dataIdx].stream == s->id && ev[s->dataIdx].conn == c->id) {
      ev[s->dataIdx].data->insert(ev[s->dataIdx].data->end(), p, p + n);
      return;
    }
    auto* v = new std::vector<uint8_t>();
    v->reserve(std::max<size_t>(n, 256 * 1024));
    v->insert(v->end(), p, p + n);
    s->dataGen = sh->gen;
    s->dataIdx = ev.size();
    ev.push_back(Event{kEvData, c->id, s->id, 0, std::string(), v});
  }

  void PushAcked(Conn* c, Stream* s, uint64_t n) {
    std::lock_guard<std::mutex> lk(sh->mu);
    auto& ev = sh->events;
    if (s->ackGen == sh->gen && s->ackIdx < ev.size() && ev[s->ackIdx].type == kEvAcked && ev[s->ackIdx].stream == s->id && ev[s->ackIdx].conn == c->id) {
      ev[s->ackIdx].n += n;
      return;
    }
    s->ackGen = sh->gen;
    s->ackIdx = ev.size();
    ev.push_back(Event{kEvAcked, c->id, s->id, n, std::string(), nullptr});
  }

  void Flush() {
    std::lock_guard<std::mutex> lk(sh->mu);
    if (sh->events.empty() || sh->scheduled) return;
    sh->scheduled = true;
    std::shared_ptr<Shared> keep = sh;
    sh->tsfn.NonBlockingCall([keep](Napi::Env env, Napi::Function cb) { Deliver(env, cb, keep); });
  }

  static void Deliver(Napi::Env env, Napi::Function cb, const std::shared_ptr<Shared>& sh) {
    std::vector<Event> evs;
    {
      std::lock_guard<std::mutex> lk(sh->mu);
      evs.swap(sh->events);
      sh->gen++;
      sh->scheduled = false;
    }
    if (env == nullptr) {
      for (auto& e : evs) delete e.data;
      return;
    }
    Napi::HandleScope scope(env);
    auto arr = Napi::Array::New(env, evs.size() * 6);
    uint32_t i = 0;
    for (auto& e : evs) {
      arr.Set(i++, Napi::Number::New(env, e.type));
      arr.Set(i++, Napi::Number::New(env, e.conn));
      arr.Set(i++, Napi::Number::New(env, static_cast<double>(e.stream)));
      arr.Set(i++, Napi::Number::New(env, static_cast<double>(e.n)));
      if (!e.text.empty()) arr.Set(i, Napi::String::New(env, e.text));
      i++;
      if (e.data) {
        auto* v = e.data;
        e.data = nullptr;
        arr.Set(i, Napi::Buffer<uint8_t>::New(env, v->data(), v->size(), [](Napi::Env, uint8_t*, std::vector<uint8_t>* vv) { delete vv; }, v));
      }
      i++;
    }
    cb.Call({arr});
  }

  // ---------------------------------------------------------------- ngtcp2 callbacks

  static Conn* C(void* ud) { return static_cast<Conn*>(ud); }

  static int OnRecvStreamData(ngtcp2_conn*, uint32_t flags, int64_t sid, uint64_t, const uint8_t* data, size_t len, void* ud, void* sud) {
    Conn* c = C(ud);
    auto* s = static_cast<Stream*>(sud);
    if (!s) {
      auto it = c->streams.find(sid);
      if (it == c->streams.end()) return 0;
      s = it->second.get();
    }
    if (len) c->ep->PushData(c, s, data, len);
    if (flags & NGTCP2_STREAM_DATA_FLAG_FIN) c->ep->Push(kEvFin, c, sid, 0);
    return 0;
  }

  static int OnAcked(ngtcp2_conn*, int64_t, uint64_t, uint64_t len, void* ud, void* sud) {
    auto* s = static_cast<Stream*>(sud);
    if (!s || !len) return 0;
    size_t n = static_cast<size_t>(len);
    uint64_t total = n;
    while (n && !s->chunks.empty()) {
      size_t avail = s->chunks.front().size() - s->frontSkip;
      if (n >= avail) {
        n -= avail;
        s->chunks.pop_front();
        s->frontSkip = 0;
        if (s->curIdx) s->curIdx--;
      } else {
        s->frontSkip += n;
        n = 0;
      }
    }
    C(ud)->ep->PushAcked(C(ud), s, total);
    return 0;
  }

  static int OnStreamOpen(ngtcp2_conn* conn, int64_t sid, void* ud) {
    Conn* c = C(ud);
    if (!ngtcp2_is_bidi_stream(sid)) return 0;
    auto s = std::make_unique<Stream>();
    s->id = sid;
    ngtcp2_conn_set_stream_user_data(conn, sid, s.get());
    c->streams[sid] = std::move(s);
    c->ep->Push(kEvIncoming, c, sid, 0);
    return 0;
  }

  static int OnStreamClose(ngtcp2_conn* conn, uint32_t, int64_t sid, uint64_t, void* ud, void*) {
    Conn* c = C(ud);
    auto it = c->streams.find(sid);
    if (it != c->streams.end()) {
      Stream* s = it->second.get();
      if (s->inReady) c->readyq.erase(std::remove(c->readyq.begin(), c->readyq.end(), s), c->readyq.end());
      if (s->token) c->sidByToken.erase(s->token);
      c->streams.erase(it);
    }
    // The peer may open another in its place.
    if (!ngtcp2_conn_is_local_stream(conn, sid) && ngtcp2_is_bidi_stream(sid)) ngtcp2_conn_extend_max_streams_bidi(conn, 1);
    c->ep->Push(kEvStreamClosed, c, sid, 0);
    return 0;
  }

  static int OnStreamReset(ngtcp2_conn*, int64_t sid, uint64_t, uint64_t code, void* ud, void*) {
    Conn* c = C(ud);
    c->ep->Push(kEvReset, c, sid, code);
    c->toShut.emplace_back(sid, code);
    return 0;
  }

  static int OnStopSending(ngtcp2_conn*, int64_t sid, uint64_t code, void* ud, void*) { return OnStreamReset(nullptr, sid, 0, code, ud, nullptr); }

  static int OnExtendStreamData(ngtcp2_conn*, int64_t, uint64_t, void* ud, void* sud) {
    auto* s = static_cast<Stream*>(sud);
    if (s) {
      s->blocked = false;
      C(ud)->ep->MakeReady(C(ud), s);
    }
    return 0;
  }

  static int OnExtendLocalBidi(ngtcp2_conn*, uint64_t max, void* ud) {
    Conn* c = C(ud);
    if (c->ready) c->ep->Push(kEvCredit, c, -1, max);
    return 0;
  }

  // The connection is JS's from here on, so "ready" must be the first event
  // of it that JS sees. ngtcp2 calls this before it processes the 1-RTT
  // packets it buffered while the handshake was incomplete: when the peer's
  // Finished was lost or arrived late, its first stream data is in those,
  // and its stream and data events come from this same read. Announced after
  // the read (as before), they came before "ready", JS knew no such
  // connection and dropped them: the stream was never seen (the listener's
  // carrier deadline then closed the connection, or a stream of native
  // streams waited forever). Only under loss or reordering.
  static int OnHandshakeCompleted(ngtcp2_conn*, void* ud) {
    Conn* c = C(ud);
    c->handshakeDone = true;
    if (c->havePeerKey) c->ep->MarkReady(c);  // no key: AfterRead refuses it
    return 0;
  }

  static int OnStatelessReset(ngtcp2_conn*, const ngtcp2_pkt_stateless_reset*, void* ud) {
    C(ud)->statelessReset = true;
    return 0;
  }

  static void OnRand(uint8_t* dest, size_t len, const ngtcp2_rand_ctx*) { (void)gnutls_rnd(GNUTLS_RND_RANDOM, dest, len); }

  static int OnNewCid(ngtcp2_conn*, ngtcp2_cid* cid, uint8_t* token, size_t cidlen, void* ud) {
    if (gnutls_rnd(GNUTLS_RND_RANDOM, cid->data, cidlen) != 0) return NGTCP2_ERR_CALLBACK_FAILURE;
    cid->datalen = cidlen;
    if (ngtcp2_crypto_generate_stateless_reset_token(token, C(ud)->ep->resetSecret, sizeof C(ud)->ep->resetSecret, cid) != 0) return NGTCP2_ERR_CALLBACK_FAILURE;
    C(ud)->ep->AddCid(C(ud), cid->data, cid->datalen);
    return 0;
  }

  static int OnRemoveCid(ngtcp2_conn*, const ngtcp2_cid* cid, void* ud) {
    Conn* c = C(ud);
    std::string k = CidKey(cid->data, cid->datalen);
    auto it = c->ep->byCid.find(k);
    if (it != c->ep->byCid.end() && it->second == c) c->ep->byCid.erase(it);
    c->cids.erase(std::remove(c->cids.begin(), c->cids.end(), k), c->cids.end());
    return 0;
  }

  static ngtcp2_conn* GetConn(ngtcp2_crypto_conn_ref* ref) { return C(ref->user_data)->conn; }

  static int VerifyCb(gnutls_session_t session) {
    auto* ref = static_cast<ngtcp2_crypto_conn_ref*>(gnutls_session_get_ptr(session));
    Conn* c = C(ref->user_data);
    uint8_t key[32];
    std::string err = QuicVerifyPeer(session, key);
    if (!err.empty()) {
      c->authError = "EACCES " + err;
      return GNUTLS_E_CERTIFICATE_ERROR;
    }
    if (c->haveExpected && std::memcmp(key, c->expected, 32) != 0) {
      c->authError = "EACCES peer at " + FormatAddr(c->remote) + " proved a different identity than expected";
      return GNUTLS_E_CERTIFICATE_ERROR;
    }
    std::memcpy(c->peerKey, key, 32);
    c->havePeerKey = true;
    unsigned n = 0;
    const gnutls_datum_t* certs = gnutls_certificate_get_peers(session, &n);
    if (certs && n == 1) c->peerCert.assign(certs[0].data, certs[0].data + certs[0].size);
    return 0;
  }

  ngtcp2_callbacks Callbacks(bool server) {
    ngtcp2_callbacks cb{};
    if (server)
      cb.recv_client_initial = ngtcp2_crypto_recv_client_initial_cb;
    else {
      cb.client_initial = ngtcp2_crypto_client_initial_cb;
      cb.recv_retry = ngtcp2_crypto_recv_retry_cb;
    }
    cb.recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb;
    cb.handshake_completed = OnHandshakeCompleted;
    cb.encrypt = ngtcp2_crypto_encrypt_cb;
    cb.decrypt = ngtcp2_crypto_decrypt_cb;
    cb.hp_mask = ngtcp2_crypto_hp_mask_cb;
    cb.recv_stream_data = OnRecvStreamData;
    cb.acked_stream_data_offset = OnAcked;
    cb.stream_open = OnStreamOpen;
    cb.stream_close = OnStreamClose;
    cb.rand = OnRand;
    cb.get_new_connection_id = OnNewCid;
    cb.remove_connection_id = OnRemoveCid;
    cb.update_key = ngtcp2_crypto_update_key_cb;
    cb.stream_reset = OnStreamReset;
    cb.extend_max_stream_data = OnExtendStreamData;
    cb.extend_max_local_streams_bidi = OnExtendLocalBidi;
    cb.delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb;
    cb.delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb;
    cb.get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb;
    cb.stream_stop_sending = OnStopSending;
    cb.recv_stateless_reset = OnStatelessReset;
    cb.version_negotiation = ngtcp2_crypto_version_negotiation_cb;
    return cb;
  }

  void Configure(Conn* c, ngtcp2_settings* s, ngtcp2_transport_params* p) {
    ngtcp2_settings_default(s);
    s->initial_ts = Now();
    s->handshake_timeout = o.handshakeNs;
    s->cc_algo = o.cc;
    s->max_tx_udp_payload_size = c->maxUdp;
    s->no_tx_udp_payload_size_shaping = 1;
    s->no_pmtud = 1;
    if (g_log) s->log_printf = LogPrintf;
    ngtcp2_transport_params_default(p);
    p->initial_max_stream_data_bidi_local = o.streamWindow;
    p->initial_max_stream_data_bidi_remote = o.streamWindow;
    p->initial_max_data = o.connWindow;
    p->initial_max_streams_bidi = o.maxStreams;
    p->initial_max_streams_uni = 0;
    p->max_idle_timeout = o.idleNs;
    p->max_udp_payload_size = kMaxQuicPayload;
    p->active_connection_id_limit = 4;
  }

  std::string InitTls(Conn* c) {
    int rv = gnutls_init(&c->tls, (c->server ? GNUTLS_SERVER | GNUTLS_NO_AUTO_SEND_TICKET : GNUTLS_CLIENT) | GNUTLS_NO_END_OF_EARLY_DATA);
    if (rv != 0) return std::string("gnutls_init: ") + gnutls_strerror(rv);
    if ((c->server ? ngtcp2_crypto_gnutls_configure_server_session(c->tls) : ngtcp2_crypto_gnutls_configure_client_session(c->tls)) != 0) return "ngtcp2_crypto_gnutls_configure_session failed";
    if ((rv = gnutls_priority_set_direct(c->tls, kPriority, nullptr)) != 0) return std::string("gnutls_priority_set_direct: ") + gnutls_strerror(rv);
    c->ref.get_conn = GetConn;
    c->ref.user_data = c;
    gnutls_session_set_ptr(c->tls, &c->ref);
    if ((rv = gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, cred)) != 0) return std::string("gnutls_credentials_set: ") + gnutls_strerror(rv);
    gnutls_datum_t alpn{reinterpret_cast<uint8_t*>(const_cast<char*>(kAlpn)), static_cast<unsigned>(sizeof kAlpn - 1)};
    gnutls_alpn_set_protocols(c->tls, &alpn, 1, GNUTLS_ALPN_MANDATORY);
    if (c->server) gnutls_certificate_server_set_request(c->tls, GNUTLS_CERT_REQUIRE);
    gnutls_session_set_verify_function(c->tls, VerifyCb);
    ngtcp2_conn_set_tls_native_handle(c->conn, c->tls);
    return "";
  }

  void AddCid(Conn* c, const uint8_t* p, size_t n) {
    std::string k = CidKey(p, n);
    byCid[k] = c;
    c->cids.push_back(k);
  }

  Conn* NewConn(bool server, const sockaddr_storage& remote, socklen_t rlen, uint32_t id) {
    auto* c = new Conn();
    c->ep = this;
    c->id = id;
    c->server = server;
    c->remote = remote;
    c->remotelen = rlen;
    c->maxUdp = o.maxUdp ? std::min(o.maxUdp, kMaxQuicPayload) : RoutePayload(remote, rlen);
    conns[id] = c;
    return c;
  }

  ngtcp2_path Path(Conn* c) {
    return ngtcp2_path{{reinterpret_cast<sockaddr*>(&local), locallen}, {reinterpret_cast<sockaddr*>(&c->remote), c->remotelen}, nullptr};
  }

  void Connect(Cmd& cmd) {
    Conn* c = NewConn(false, cmd.addr, cmd.alen, cmd.conn);
    c->haveExpected = true;
    std::memcpy(c->expected, cmd.key, 32);
    ngtcp2_cid dcid, scid;
    dcid.datalen = kCidLen;
    scid.datalen = kCidLen;
    gnutls_rnd(GNUTLS_RND_RANDOM, dcid.data, kCidLen);
    gnutls_rnd(GNUTLS_RND_RANDOM, scid.data, kCidLen);
    ngtcp2_settings s;
    ngtcp2_transport_params p;
    Configure(c, &s, &p);
    auto cb = Callbacks(false);
    auto path = Path(c);
    int rv = ngtcp2_conn_client_new(&c->conn, &dcid, &scid, &path, NGTCP2_PROTO_VER_V1, &cb, &s, &p, nullptr, c);
    if (rv != 0) {
      Fail(c, std::string("EIO ngtcp2_conn_client_new: ") + ngtcp2_strerror(rv));
      return;
    }
    std::string err = InitTls(c);
    if (!err.empty()) {
      Fail(c, "EIO " + err);
      return;
    }
    AddCid(c, scid.data, scid.datalen);
  }

  // A connection that never got going: report and retire.
  void Fail(Conn* c, const std::string& reason) {
    Unpend(c);
    c->dead = true;
    c->closeReason = reason;
  }

  // The handshake is over (done, failed or evicted): free its pending slot.
  void Unpend(Conn* c) {
    if (!c->counted) return;
    c->counted = false;
    pending--;
    auto it = pendingBySource.find(c->source);
    if (it == pendingBySource.end()) return;
    auto& q = it->second;
    q.erase(std::remove(q.begin(), q.end(), c), q.end());
    if (q.empty()) pendingBySource.erase(it);
  }

  // Make room for a handshake from `src` (base/admission.ts's rule): a
  // source at its limit gives up its own oldest handshake; when all slots
  // are taken, the source holding the most gives up its oldest. So one
  // source's flood only ever pushes out its own handshakes.
  void MakeRoom(const std::string& src) {
    Conn* victim = nullptr;
    auto own = pendingBySource.find(src);
    if (own != pendingBySource.end() && own->second.size() >= o.maxPendingPerSource) {
      victim = own->second.front();
    } else if (pending >= o.maxPending) {
      size_t most = 0;
      for (auto& [k, q] : pendingBySource)
        if (q.size() > most) {
          most = q.size();
          victim = q.front();
        }
    }
    if (!victim) return;
    st.evicted++;
    Kill(victim, "", false);
  }

  void Accept(const sockaddr_storage& addr, socklen_t alen, const uint8_t* pkt, size_t len) {
    ngtcp2_pkt_hd hd;
    int arv = ngtcp2_accept(&hd, pkt, len);
    if (g_debug) fprintf(stderr, "[quic srv] accept %zu bytes: %d pending=%zu\n", len, arv, pending);
    if (arv != 0) return;
    if (conns.size() >= o.maxConns) {
      st.refused++;
      return;
    }
    std::string src = SourceKey(addr);
    MakeRoom(src);
    Conn* c = NewConn(true, addr, alen, nextConn++);
    c->counted = true;
    c->source = src;
    pending++;
    pendingBySource[src].push_back(c);
    ngtcp2_cid scid;
    scid.datalen = kCidLen;
    gnutls_rnd(GNUTLS_RND_RANDOM, scid.data, kCidLen);
    ngtcp2_settings s;
    ngtcp2_transport_params p;
    Configure(c, &s, &p);
    p.original_dcid = hd.dcid;
    p.stateless_reset_token_present = 1;
    ngtcp2_crypto_generate_stateless_reset_token(p.stateless_reset_token, resetSecret, sizeof resetSecret, &scid);
    auto cb = Callbacks(true);
    auto path = Path(c);
    int rv = ngtcp2_conn_server_new(&c->conn, &hd.scid, &scid, &path, hd.version, &cb, &s, &p, nullptr, c);
    if (rv != 0 || !InitTls(c).empty()) {
      Fail(c, "");
      return;
    }
    AddCid(c, hd.dcid.data, hd.dcid.datalen);
    AddCid(c, scid.data, scid.datalen);
    ReadPkt(c, addr, alen, pkt, len);
  }

  // ---------------------------------------------------------------- I/O

  void ReadPkt(Conn* c, const sockaddr_storage& addr, socklen_t alen, const uint8_t* pkt, size_t len) {
    if (c->dead) return;
    ngtcp2_path path{{reinterpret_cast<sockaddr*>(&local), locallen}, {reinterpret_cast<sockaddr*>(const_cast<sockaddr_storage*>(&addr)), alen}, nullptr};
    ngtcp2_pkt_info pi{};
    int rv = ngtcp2_conn_read_pkt(c->conn, &path, &pi, pkt, len, Now());
    if (rv != 0) {
      HandleError(c, rv);
      return;
    }
    AfterRead(c);
  }

  void AfterRead(Conn* c) {
    for (auto& [sid, code] : c->toShut) ngtcp2_conn_shutdown_stream(c->conn, sid, code);
    c->toShut.clear();
    if (c->handshakeDone && !c->ready) {
      Kill(c, "EACCES peer proved no identity", true);
      return;
    }
    if (!c->opens.empty()) TryOpens(c);
  }

  // The handshake is done and the peer proved a key: hand the connection to
  // JS (from the handshake_completed callback, before any stream event).
  void MarkReady(Conn* c) {
    if (c->ready) return;
    c->ready = true;
    Unpend(c);
    ngtcp2_conn_set_keep_alive_timeout(c->conn, o.keepAliveNs);
    // The key the verify callback found, then the certificate it came from: JS checks that again (crypto/peer-cert.ts) and decides.
    auto* v = new std::vector<uint8_t>(c->peerKey, c->peerKey + 32);
    v->insert(v->end(), c->peerCert.begin(), c->peerCert.end());
    Push(kEvReady, c, -1, 0, FormatAddr(c->remote), v);
    Push(kEvCredit, c, -1, ngtcp2_conn_get_streams_bidi_left(c->conn));
  }

  void HandleError(Conn* c, int rv) {
    if (g_debug) fprintf(stderr, "[quic %s] conn %u error %s ready=%d auth=%s\n", o.server ? "srv" : "cli", c->id, ngtcp2_strerror(rv), c->ready, c->authError.c_str());
    switch (rv) {
      case NGTCP2_ERR_DRAINING: {
        ngtcp2_connection_close_error ce;
        ngtcp2_conn_get_connection_close_error(c->conn, &ce);
        // ngtcp2 reports a stateless reset and a CONNECTION_CLOSE with code 0 alike: tell them apart.
        std::string why;
        if (c->statelessReset) {
          why = "ESHUTDOWN connection reset by peer (stateless reset: the peer has no state for it)";
        } else {
          why = c->ready ? "ESHUTDOWN connection closed by peer" : "EACCES peer rejected the handshake";
          if (ce.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT && ce.error_code >= 0x100 && ce.error_code < 0x200)
            why += " (TLS alert " + std::to_string(ce.error_code - 0x100) + ")";
          else if (ce.error_code)
            why += " (code " + std::to_string(ce.error_code) + ")";
        }
        Kill(c, why, false);
        return;
      }
      case NGTCP2_ERR_DROP_CONN:
        Kill(c, "EIO connection dropped", false);
        return;
      case NGTCP2_ERR_IDLE_CLOSE:
        Kill(c, "ETIMEDOUT no packet from the peer within the idle timeout", false);
        return;
      case NGTCP2_ERR_HANDSHAKE_TIMEOUT:
        Kill(c, "ETIMEDOUT handshake timed out", false);
        return;
      case NGTCP2_ERR_CRYPTO: {
        ngtcp2_connection_close_error ce;
        ngtcp2_connection_close_error_set_transport_error_tls_alert(&ce, ngtcp2_conn_get_tls_alert(c->conn), nullptr, 0);
        Kill(c, c->authError.empty() ? "EPROTO TLS handshake failed" : c->authError, true, &ce);
        return;
      }
      default: {
        ngtcp2_connection_close_error ce;
        ngtcp2_connection_close_error_set_transport_error_liberr(&ce, rv, nullptr, 0);
        Kill(c, std::string("EIO ") + ngtcp2_strerror(rv), true, &ce);
      }
    }
  }

  // Retire a connection (freed by Reap): send CONNECTION_CLOSE if asked.
  void Kill(Conn* c, const std::string& reason, bool sendClose, const ngtcp2_connection_close_error* ce = nullptr) {
    if (c->dead) return;
    if (sendClose && c->conn && !ngtcp2_conn_is_in_closing_period(c->conn) && !ngtcp2_conn_is_in_draining_period(c->conn)) {
      ngtcp2_connection_close_error def;
      if (!ce) {
        ngtcp2_connection_close_error_set_application_error(&def, 0, nullptr, 0);
        ce = &def;
      }
      ngtcp2_path_storage ps;
      ngtcp2_path_storage_zero(&ps);
      ngtcp2_pkt_info pi{};
      ngtcp2_ssize n = ngtcp2_conn_write_connection_close(c->conn, &ps.path, &pi, tx.data(), std::min(tx.size(), c->maxUdp), ce, Now());
      if (n > 0) SendBatch(c, tx.data(), static_cast<size_t>(n), 0);
    }
    Unpend(c);
    c->dead = true;
    c->closeReason = reason;
  }

  void Reap() {
    for (auto it = conns.begin(); it != conns.end();) {
      Conn* c = it->second;
      if (!c->dead) {
        ++it;
        continue;
      }
      it = conns.erase(it);
      for (auto& k : c->cids) {
        auto f = byCid.find(k);
        if (f != byCid.end() && f->second == c) byCid.erase(f);
      }
      Unpend(c);
      // Accepted connections JS never saw are not reported.
      if (!c->server || c->ready) Push(kEvClosed, c, -1, 0, c->closeReason.empty() ? "EIO connection failed" : c->closeReason);
      c->streams.clear();
      if (c->conn) ngtcp2_conn_del(c->conn);
      if (c->tls) gnutls_deinit(c->tls);
      delete c;
    }
  }

  void Receive() {
    static thread_local std::vector<uint8_t> bufs(kRecvSlots * kRecvBuf);
    mmsghdr msgs[kRecvSlots];
    iovec iov[kRecvSlots];
    sockaddr_storage names[kRecvSlots];
    alignas(cmsghdr) char ctrl[kRecvSlots][CMSG_SPACE(sizeof(int))];
    for (int round = 0; round < 16; round++) {
      for (size_t i = 0; i < kRecvSlots; i++) {
        iov[i] = {bufs.data() + i * kRecvBuf, kRecvBuf};
        msgs[i].msg_hdr = {};
        msgs[i].msg_hdr.msg_name = &names[i];
        msgs[i].msg_hdr.msg_namelen = sizeof names[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = ctrl[i];
        msgs[i].msg_hdr.msg_controllen = sizeof ctrl[i];
      }
      int n = recvmmsg(fd, msgs, kRecvSlots, MSG_DONTWAIT, nullptr);
      if (n <= 0) return;
      st.recvCalls++;
      for (int i = 0; i < n; i++) {
        size_t len = msgs[i].msg_len;
        size_t seg = len;
        for (cmsghdr* cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr); cm; cm = CMSG_NXTHDR(&msgs[i].msg_hdr, cm)) {
          if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
            int g;
            std::memcpy(&g, CMSG_DATA(cm), sizeof g);
            if (g > 0) seg = static_cast<size_t>(g);
          }
        }
        st.bytesIn += len;
        const uint8_t* p = bufs.data() + i * kRecvBuf;
        for (size_t off = 0; off < len; off += seg) {
          st.datagramsIn++;
          Dispatch(names[i], msgs[i].msg_hdr.msg_namelen, p + off, std::min(seg, len - off));
        }
      }
      if (static_cast<size_t>(n) < kRecvSlots) return;
    }
  }

  void Dispatch(const sockaddr_storage& addr, socklen_t alen, const uint8_t* pkt, size_t len) {
    if (IsPunchDatagram(pkt, len)) {
      st.punchIn++;  // it opened a NAT on its way here; nothing to answer
      return;
    }
    ngtcp2_version_cid vc;
    if (ngtcp2_pkt_decode_version_cid(&vc, pkt, len, kCidLen) != 0) return;
    auto it = byCid.find(CidKey(vc.dcid, vc.dcidlen));
    if (it != byCid.end()) {
      ReadPkt(it->second, addr, alen, pkt, len);
      return;
    }
    if (!(pkt[0] & 0x80)) {
      if (!o.server) {
        // A dialing endpoint: a stateless reset from a peer that lost our
        // connection carries no connection id of ours, only the token; let
        // the connections to that address look at it (ngtcp2 checks the token).
        bool any = false;
        for (auto& [id, c] : conns)
          if (!c->dead && SameAddr(c->remote, addr)) {
            any = true;
            ReadPkt(c, addr, alen, pkt, len);
          }
        if (any) return;
      }
      // A short-header packet for a connection we do not have (we restarted,
      // or forgot it): tell the peer at once instead of letting it time out.
      if (vc.dcidlen == kCidLen) StatelessReset(addr, alen, vc.dcid, len);
      return;
    }
    if (o.server) Accept(addr, alen, pkt, len);
  }

  static bool SameAddr(const sockaddr_storage& a, const sockaddr_storage& b) {
    if (a.ss_family != b.ss_family) return false;
    if (a.ss_family == AF_INET) {
      auto *x = reinterpret_cast<const sockaddr_in*>(&a), *y = reinterpret_cast<const sockaddr_in*>(&b);
      return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    auto *x = reinterpret_cast<const sockaddr_in6*>(&a), *y = reinterpret_cast<const sockaddr_in6*>(&b);
    return x->sin6_port == y->sin6_port && std::memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
  }

  // RFC 9000 10.3: a reset is at most kResetSize bytes and answers only
  // larger packets (so two endpoints never answer each other's resets), at
  // most kResetsPerSecond.
  void StatelessReset(const sockaddr_storage& addr, socklen_t alen, const uint8_t* dcid, size_t len) {
    constexpr size_t kResetSize = 42;
    constexpr uint64_t kResetsPerSecond = 100;
    if (len <= kResetSize) return;
    uint64_t now = Now();
    if (now - resetWindowStart > NGTCP2_SECONDS) {
      resetWindowStart = now;
      resetsInWindow = 0;
    }
    if (resetsInWindow >= kResetsPerSecond) return;
    resetsInWindow++;
    ngtcp2_cid cid;
    ngtcp2_cid_init(&cid, dcid, kCidLen);
    uint8_t token[NGTCP2_STATELESS_RESET_TOKENLEN];
    if (ngtcp2_crypto_generate_stateless_reset_token(token, resetSecret, sizeof resetSecret, &cid) != 0) return;
    uint8_t rnd[kResetSize];
    size_t randlen = kResetSize - 1 - NGTCP2_STATELESS_RESET_TOKENLEN;
    gnutls_rnd(GNUTLS_RND_NONCE, rnd, randlen);
    uint8_t out[kResetSize + 8];
    ngtcp2_ssize n = ngtcp2_pkt_write_stateless_reset(out, sizeof out, token, rnd, randlen);
    if (n <= 0) return;
    sendto(fd, out, static_cast<size_t>(n), 0, reinterpret_cast<const sockaddr*>(&addr), alen);
    st.resets++;
  }

  // One sendmsg of `len` bytes; `seg` > 0 splits them into datagrams of that size (GSO).
  void SendBatch(Conn* c, const uint8_t* data, size_t len, size_t seg) {
    iovec iov{const_cast<uint8_t*>(data), len};
    msghdr m{};
    m.msg_name = &c->remote;
    m.msg_namelen = c->remotelen;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(uint16_t))];
    if (seg && seg < len) {
      std::memset(ctrl, 0, sizeof ctrl);
      m.msg_control = ctrl;
      m.msg_controllen = sizeof ctrl;
      cmsghdr* cm = CMSG_FIRSTHDR(&m);
      cm->cmsg_level = SOL_UDP;
      cm->cmsg_type = UDP_SEGMENT;
      cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
      uint16_t s16 = static_cast<uint16_t>(seg);
      std::memcpy(CMSG_DATA(cm), &s16, sizeof s16);
    }
    for (int tries = 0; tries < 50; tries++) {
      ssize_t r = sendmsg(fd, &m, 0);
      if (r >= 0) {
        st.sendCalls++;
        st.bytesOut += len;
        size_t dg = seg && seg < len ? (len + seg - 1) / seg : 1;
        st.datagramsOut += dg;
        size_t biggest = seg && seg < len ? seg : len;
        if (biggest > st.maxDatagramOut) st.maxDatagramOut = biggest;
        return;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
        pollfd pf{fd, POLLOUT, 0};
        poll(&pf, 1, 2);
        continue;
      }
      if (m.msg_control && (errno == EIO || errno == EINVAL || errno == EOPNOTSUPP)) {
        // No GSO here: send the datagrams one by one from now on.
        gsoOk = false;
        for (size_t off = 0; off < len; off += seg) SendBatch(c, data + off, std::min(seg, len - off), 0);
        return;
      }
      break;  // dropped (EMSGSIZE, unreachable, ...): QUIC loss recovery takes over
    }
    st.dropped++;
  }

  void MakeReady(Conn* c, Stream* s) {
    if (s->inReady || s->blocked || s->shut) return;
    if (s->unsent == 0 && !(s->finQueued && !s->finSent)) return;
    s->inReady = true;
    c->readyq.push_back(s);
  }

  void Advance(Stream* s, size_t n) {
    s->unsent -= n;
    while (n) {
      size_t avail = s->chunks[s->curIdx].size() - s->curSkip;
      size_t take = std::min(avail, n);
      s->curSkip += take;
      n -= take;
      if (s->curSkip == s->chunks[s->curIdx].size()) {
        s->curIdx++;
        s->curSkip = 0;
      }
    }
  }

  // Returns the number of packets written.
  size_t WriteConn(Conn* c) {
    if (c->dead) return 0;
    uint64_t ts = Now();
    size_t maxUdp = ngtcp2_conn_get_max_tx_udp_payload_size(c->conn);
    size_t gsoMax = (o.gso && gsoOk) ? std::max<size_t>(1, std::min<size_t>(64, kGsoLimit / maxUdp)) : 1;
    size_t quantum = std::max<size_t>(1, ngtcp2_conn_get_send_quantum(c->conn) / maxUdp);
    if (tx.size() < gsoMax * maxUdp) tx.resize(gsoMax * maxUdp);
    size_t pos = 0, count = 0, seg = 0, sentPkts = 0;
    ngtcp2_path_storage ps;
    ngtcp2_path_storage_zero(&ps);
    ngtcp2_pkt_info pi;
    ngtcp2_vec vec[kMaxVec];
    for (;;) {
      Stream* s = nullptr;
      while (!c->readyq.empty()) {
        Stream* f = c->readyq.front();
        if (!f->shut && !f->blocked && (f->unsent || (f->finQueued && !f->finSent))) {
          s = f;
          break;
        }
        f->inReady = false;
        c->readyq.pop_front();
      }
      if (s && s->unsent && ngtcp2_conn_get_max_data_left(c->conn) == 0) s = nullptr;
      size_t nvec = 0, total = 0;
      uint32_t flags = NGTCP2_WRITE_STREAM_FLAG_MORE;
      if (s) {
        size_t idx = s->curIdx, skip = s->curSkip;
        while (nvec < kMaxVec && idx < s->chunks.size()) {
          auto& ch = s->chunks[idx];
          vec[nvec].base = ch.data() + skip;
          vec[nvec].len = ch.size() - skip;
          total += vec[nvec].len;
          nvec++;
          idx++;
          skip = 0;
        }
        if (s->finQueued && total == s->unsent) flags |= NGTCP2_WRITE_STREAM_FLAG_FIN;
      }
      ngtcp2_ssize ndatalen = -1;
      ngtcp2_ssize nwrite = ngtcp2_conn_writev_stream(c->conn, &ps.path, &pi, tx.data() + pos, maxUdp, &ndatalen, flags, s ? s->id : -1, vec, nvec, ts);
      if (s && ndatalen >= 0) {
        Advance(s, static_cast<size_t>(ndatalen));
        if ((flags & NGTCP2_WRITE_STREAM_FLAG_FIN) && static_cast<size_t>(ndatalen) == total) s->finSent = true;
        // Round robin: a stream that still has data goes to the back.
        if (c->readyq.size() > 1 && c->readyq.front() == s) {
          c->readyq.pop_front();
          c->readyq.push_back(s);
        }
      }
      if (nwrite < 0) {
        if (nwrite == NGTCP2_ERR_WRITE_MORE) continue;
        if (s && (nwrite == NGTCP2_ERR_STREAM_DATA_BLOCKED || nwrite == NGTCP2_ERR_STREAM_SHUT_WR || nwrite == NGTCP2_ERR_STREAM_NOT_FOUND)) {
          if (nwrite == NGTCP2_ERR_STREAM_DATA_BLOCKED)
            s->blocked = true;
          else
            s->shut = true;
          continue;
        }
        ngtcp2_connection_close_error ce;
        ngtcp2_connection_close_error_set_transport_error_liberr(&ce, static_cast<int>(nwrite), nullptr, 0);
        if (pos) SendBatch(c, tx.data(), pos, count > 1 ? seg : 0);
        Kill(c, std::string("EIO ") + ngtcp2_strerror(static_cast<int>(nwrite)), true, &ce);
        return sentPkts;
      }
      if (nwrite == 0) break;
      size_t n = static_cast<size_t>(nwrite);
      sentPkts++;
      if (count == 0) {
        seg = n;
        pos += n;
        count = 1;
      } else if (n > seg) {
        // Bigger than the batch's segment size: send the batch, start anew.
        SendBatch(c, tx.data(), pos, count > 1 ? seg : 0);
        std::memmove(tx.data(), tx.data() + pos, n);
        pos = n;
        seg = n;
        count = 1;
      } else {
        pos += n;
        count++;
        if (n < seg) {  // a short datagram ends a GSO batch
          SendBatch(c, tx.data(), pos, seg);
          pos = count = 0;
        }
      }
      if (count >= gsoMax) {
        SendBatch(c, tx.data(), pos, count > 1 ? seg : 0);
        pos = count = 0;
      }
      if (sentPkts >= quantum) break;  // pacing: ngtcp2's timer says when to go on
    }
    if (pos) SendBatch(c, tx.data(), pos, count > 1 ? seg : 0);
    // Pacing only once the handshake is done: in the handshake states ngtcp2
    // 0.12 sends nothing but ACKs while paced, and the pacing delay of a
    // ~64 KiB padded Initial at the initial RTT held the client's Finished
    // back indefinitely.
    if (c->ready) ngtcp2_conn_update_pkt_tx_time(c->conn, ts);
    return sentPkts;
  }

  // Open streams for queued JS opens, oldest first, while the peer allows.
  void TryOpens(Conn* c) {
    while (!c->opens.empty() && c->ready && !c->dead) {
      uint64_t token = c->opens.front();
      auto it = c->pendingByToken.find(token);
      if (it == c->pendingByToken.end()) {  // reset before it was opened
        c->opens.pop_front();
        continue;
      }
      int64_t sid;
      int rv = ngtcp2_conn_open_bidi_stream(c->conn, &sid, it->second.get());
      if (rv != 0) return;  // NGTCP2_ERR_STREAM_ID_BLOCKED: wait for MAX_STREAMS
      Stream* s = it->second.get();
      s->id = sid;
      c->streams[sid] = std::move(it->second);
      c->pendingByToken.erase(it);
      c->sidByToken[token] = sid;
      c->opens.pop_front();
      Push(kEvOpened, c, sid, token);
      MakeReady(c, s);
    }
  }

  Conn* Find(uint32_t id) {
    auto it = conns.find(id);
    return it == conns.end() || it->second->dead ? nullptr : it->second;
  }

  // A stream by id, or (sid < 0) by the token -(sid + 1) of the JS open
  // that made it, whether ngtcp2 has opened it yet or not.
  Stream* FindStream(Conn* c, int64_t sid) {
    if (sid < 0) {
      uint64_t token = static_cast<uint64_t>(-(sid + 1));
      auto p = c->pendingByToken.find(token);
      if (p != c->pendingByToken.end()) return p->second.get();
      auto t = c->sidByToken.find(token);
      if (t == c->sidByToken.end()) return nullptr;
      sid = t->second;
    }
    auto it = c->streams.find(sid);
    return it == c->streams.end() ? nullptr : it->second.get();
  }

  void RunCommands() {
    std::vector<Cmd> todo;
    {
      std::lock_guard<std::mutex> lk(cmdMu);
      todo.swap(cmds);
    }
    for (auto& cmd : todo) {
      if (cmd.type == Cmd::Connect) {
        Connect(cmd);
        continue;
      }
      Conn* c = Find(cmd.conn);
      if (!c) continue;
      switch (cmd.type) {
        case Cmd::Open: {
          auto s = std::make_unique<Stream>();
          s->token = cmd.n;
          c->pendingByToken[cmd.n] = std::move(s);
          c->opens.push_back(cmd.n);
          TryOpens(c);
          break;
        }
        case Cmd::Write: {
          Stream* s = FindStream(c, cmd.stream);
          if (!s || s->shut || s->finQueued) break;
          size_t n = cmd.data.size();
          if (n) {
            bool untouched = !s->chunks.empty() && s->curIdx <= s->chunks.size() - 1 && !(s->curIdx == s->chunks.size() - 1 && s->curSkip > 0);
            if (untouched && s->chunks.back().size() + n <= kCoalesce)
              s->chunks.back().insert(s->chunks.back().end(), cmd.data.begin(), cmd.data.end());
            else
              s->chunks.push_back(std::move(cmd.data));
            s->unsent += n;
          }
          if (cmd.fin) s->finQueued = true;
          if (s->id >= 0) MakeReady(c, s);
          break;
        }
        case Cmd::Consume: {
          ngtcp2_conn_extend_max_offset(c->conn, cmd.n);
          Stream* s = FindStream(c, cmd.stream);
          if (s && s->id >= 0) ngtcp2_conn_extend_max_stream_offset(c->conn, s->id, cmd.n);
          break;
        }
        case Cmd::Reset: {
          Stream* s = FindStream(c, cmd.stream);
          if (s && s->id < 0) {
            c->pendingByToken.erase(s->token);  // never opened: nothing to tell the peer
          } else if (s) {
            s->shut = true;
            ngtcp2_conn_shutdown_stream(c->conn, s->id, cmd.n);
          }
          break;
        }
        case Cmd::Close:
          Kill(c, "ESHUTDOWN connection closed", true);
          break;
        default:
          break;
      }
    }
  }

  void Run() {
    pollfd fds[2] = {{fd, POLLIN, 0}, {efd, POLLIN, 0}};
    while (!stop.load()) {
      uint64_t now = Now(), next = UINT64_MAX;
      for (auto& [id, c] : conns)
        if (!c->dead) next = std::min<uint64_t>(next, ngtcp2_conn_get_expiry(c->conn));
      timespec tsv, *tsp = nullptr;
      if (next != UINT64_MAX) {
        uint64_t d = next > now ? next - now : 0;
        tsv.tv_sec = static_cast<time_t>(d / NGTCP2_SECONDS);
        tsv.tv_nsec = static_cast<long>(d % NGTCP2_SECONDS);
        tsp = &tsv;
      }
      fds[0].revents = fds[1].revents = 0;
      int pr = ppoll(fds, 2, tsp, nullptr);
      if (pr < 0 && errno != EINTR) break;
      if (fds[1].revents & POLLIN) {
        uint64_t v;
        ssize_t r = read(efd, &v, sizeof v);
        (void)r;
        wakePending.store(false);
        RunCommands();
      }
      if (fds[0].revents & POLLIN) Receive();
      now = Now();
      for (auto& [id, c] : conns) {
        if (c->dead || ngtcp2_conn_get_expiry(c->conn) > now) continue;
        int rv = ngtcp2_conn_handle_expiry(c->conn, now);
        if (rv != 0) HandleError(c, rv);
      }
      // A pass can end before everything queued went out (ngtcp2 0.12 may
      // stop after one packet of a level); go on until a pass writes nothing.
      for (auto& [id, c] : conns)
        for (int pass = 0; pass < 8 && WriteConn(c) > 0; pass++) {
        }
      Reap();
      Flush();
    }
    for (auto& [id, c] : conns) Kill(c, "ESHUTDOWN endpoint closed", true);
    Reap();
    Flush();
  }
};

ngtcp2_cc_algo ParseCc(const std::string& s) {
  if (s == "reno") return NGTCP2_CC_ALGO_RENO;
  if (s == "bbr") return NGTCP2_CC_ALGO_BBR;
  if (s == "bbr2") return NGTCP2_CC_ALGO_BBR2;
  return NGTCP2_CC_ALGO_CUBIC;
}

bool ParseAddr(const std::string& ip, int port, sockaddr_storage* out, socklen_t* len) {
  std::memset(out, 0, sizeof *out);
  auto* v4 = reinterpret_cast<sockaddr_in*>(out);
  if (inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    *len = sizeof(sockaddr_in);
    return true;
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(out);
  if (inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    *len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

double Num(const Napi::Object& o, const char* k, double def) {
  Napi::Value v = o.Get(k);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : def;
}

class QuicEndpointWrap : public Napi::ObjectWrap<QuicEndpointWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "QuicEndpoint",
                       {
                           InstanceMethod("port", &QuicEndpointWrap::Port),
                           InstanceMethod("connect", &QuicEndpointWrap::Connect),
                           InstanceMethod("open", &QuicEndpointWrap::Open),
                           InstanceMethod("write", &QuicEndpointWrap::Write),
                           InstanceMethod("consume", &QuicEndpointWrap::Consume),
                           InstanceMethod("resetStream", &QuicEndpointWrap::ResetStream),
                           InstanceMethod("closeConnection", &QuicEndpointWrap::CloseConnection),
                           InstanceMethod("sendDatagram", &QuicEndpointWrap::SendDatagram),
                           InstanceMethod("stats", &QuicEndpointWrap::StatsM),
                           InstanceMethod("close", &QuicEndpointWrap::Close),
                       });
  }

  // new QuicEndpoint({ host, port, server, seed, publicKey, ... }, onEvents)
  explicit QuicEndpointWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<QuicEndpointWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) throw Napi::TypeError::New(env, "new QuicEndpoint(options, onEvents)");
    auto opts = info[0].As<Napi::Object>();
    auto ep = std::make_unique<Endpoint>();
    Options& o = ep->o;
    o.server = opts.Get("server").ToBoolean();
    o.idleNs = static_cast<uint64_t>(Num(opts, "idleTimeoutMs", 15000) * 1e6);
    o.handshakeNs = static_cast<uint64_t>(Num(opts, "handshakeTimeoutMs", 5000) * 1e6);
    o.keepAliveNs = static_cast<uint64_t>(Num(opts, "keepAliveMs", 4000) * 1e6);
    o.maxStreams = static_cast<uint64_t>(Num(opts, "maxStreams", 256));
    o.streamWindow = static_cast<uint64_t>(Num(opts, "streamWindow", 8 << 20));
    o.connWindow = static_cast<uint64_t>(Num(opts, "connectionWindow", 16 << 20));
    o.maxUdp = static_cast<size_t>(Num(opts, "maxUdpPayload", 0));
    o.gso = !opts.Has("gso") || opts.Get("gso").ToBoolean();
    o.udpBuf = static_cast<int>(Num(opts, "udpBufferBytes", 4 << 20));
    o.maxPending = std::max<size_t>(1, static_cast<size_t>(Num(opts, "maxPendingHandshakes", 64)));
    o.maxPendingPerSource = std::max<size_t>(1, std::min(o.maxPending, static_cast<size_t>(Num(opts, "maxPendingPerSource", 8))));
    o.maxConns = static_cast<size_t>(Num(opts, "maxConnections", 1024));
    o.cc = ParseCc(opts.Has("cc") ? opts.Get("cc").ToString().Utf8Value() : "cubic");
    auto seed = opts.Get("seed"), pub = opts.Get("publicKey");
    if (!seed.IsTypedArray() || seed.As<Napi::Uint8Array>().ByteLength() != 32 || !pub.IsTypedArray() || pub.As<Napi::Uint8Array>().ByteLength() != 32)
      throw Napi::TypeError::New(env, "seed and publicKey must be 32-byte Uint8Arrays");
    std::string err = QuicMakeCredentials(seed.As<Napi::Uint8Array>().Data(), pub.As<Napi::Uint8Array>().Data(), &ep->cred);
    static const char kResetLabel[] = "quicmap stateless reset v1";
    if (err.empty() && gnutls_hmac_fast(GNUTLS_MAC_SHA256, seed.As<Napi::Uint8Array>().Data(), 32, kResetLabel, sizeof kResetLabel - 1, ep->resetSecret) != 0) err = "cannot derive the stateless reset key";
    if (!err.empty()) throw Napi::Error::New(env, "QUIC credentials: " + err);
    gnutls_certificate_set_verify_function(ep->cred, Endpoint::VerifyCb);

    std::string host = opts.Get("host").ToString().Utf8Value();
    int port = static_cast<int>(Num(opts, "port", 0));
    if (!ParseAddr(host, port, &ep->local, &ep->locallen)) throw Napi::TypeError::New(env, "host must be an IP address: " + host);
    ep->fd = socket(ep->local.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ep->fd < 0) ThrowErrno(env, errno, "socket");
    int one = 1;
    if (ep->local.ss_family == AF_INET6) setsockopt(ep->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    for (int opt : {SO_RCVBUFFORCE, SO_SNDBUFFORCE}) {
      if (setsockopt(ep->fd, SOL_SOCKET, opt, &o.udpBuf, sizeof o.udpBuf) != 0)
        setsockopt(ep->fd, SOL_SOCKET, opt == SO_RCVBUFFORCE ? SO_RCVBUF : SO_SNDBUF, &o.udpBuf, sizeof o.udpBuf);
    }
    // Never fragment: datagrams are sized to the route MTU.
    int pmtu = IP_PMTUDISC_DO;
    if (ep->local.ss_family == AF_INET)
      setsockopt(ep->fd, IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof pmtu);
    else
      setsockopt(ep->fd, IPPROTO_IPV6, IPV6_MTU_DISCOVER, &pmtu, sizeof pmtu);
    setsockopt(ep->fd, SOL_UDP, UDP_GRO, &one, sizeof one);
    if (bind(ep->fd, reinterpret_cast<sockaddr*>(&ep->local), ep->locallen) != 0) ThrowErrno(env, errno, "bind " + host + ":" + std::to_string(port));
    ep->locallen = sizeof ep->local;
    getsockname(ep->fd, reinterpret_cast<sockaddr*>(&ep->local), &ep->locallen);
    ep->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ep->efd < 0) ThrowErrno(env, errno, "eventfd");
    ep->sh->tsfn = Napi::ThreadSafeFunction::New(env, info[1].As<Napi::Function>(), "quicmap-quic", 0, 1);
    Endpoint* raw = ep.get();
    ep->th = std::thread([raw] { raw->Run(); });
    ep_ = std::move(ep);
  }

  ~QuicEndpointWrap() { Shutdown(); }

 private:
  std::unique_ptr<Endpoint> ep_;

  void Shutdown() {
    if (!ep_) return;
    ep_->stop.store(true);
    ep_->Wake();
    if (ep_->th.joinable()) ep_->th.join();
    ep_->sh->tsfn.Release();
    ep_.reset();
  }

  Endpoint* Ep(const Napi::CallbackInfo& info) {
    if (!ep_) throw Napi::Error::New(info.Env(), "QuicEndpoint is closed");
    return ep_.get();
  }

  Napi::Value Port(const Napi::CallbackInfo& info) {
    Endpoint* ep = Ep(info);
    int port = ep->local.ss_family == AF_INET ? ntohs(reinterpret_cast<sockaddr_in*>(&ep->local)->sin_port) : ntohs(reinterpret_cast<sockaddr_in6*>(&ep->local)->sin6_port);
    return Napi::Number::New(info.Env(), port);
  }

  // connect(ip, port, expectedKey) -> connection id; "ready" or "closed" follows.
  Napi::Value Connect(const Napi::CallbackInfo& info) {
    Endpoint* ep = Ep(info);
    Cmd c{};
    c.type = Cmd::Connect;
    std::string ip = info[0].ToString().Utf8Value();
    if (!ParseAddr(ip, info[1].ToNumber().Int32Value(), &c.addr, &c.alen)) throw Napi::TypeError::New(info.Env(), "not an IP address: " + ip);
    if (c.addr.ss_family != ep->local.ss_family) throw Napi::TypeError::New(info.Env(), "address family differs from the endpoint's");
    auto key = info[2].As<Napi::Uint8Array>();
    if (key.ByteLength() != 32) throw Napi::TypeError::New(info.Env(), "expected key must be 32 bytes");
    std::memcpy(c.key, key.Data(), 32);
    c.conn = ep->nextConn++;
    uint32_t id = c.conn;
    ep->Command(std::move(c));
    return Napi::Number::New(info.Env(), id);
  }

  Napi::Value Open(const Napi::CallbackInfo& info) {
    Cmd c{};
    c.type = Cmd::Open;
    c.conn = info[0].ToNumber().Uint32Value();
    c.n = static_cast<uint64_t>(info[1].ToNumber().DoubleValue());
    Ep(info)->Command(std::move(c));
    return info.Env().Undefined();
  }

  // write(conn, stream, data | null, fin): the bytes are copied.
  Napi::Value Write(const Napi::CallbackInfo& info) {
    Cmd c{};
    c.type = Cmd::Write;
    c.conn = info[0].ToNumber().Uint32Value();
    c.stream = info[1].ToNumber().Int64Value();
    if (info[2].IsTypedArray()) {
      auto a = info[2].As<Napi::Uint8Array>();
      c.data.assign(a.Data(), a.Data() + a.ByteLength());
    }
    c.fin = info[3].ToBoolean();
    Ep(info)->Command(std::move(c));
    return info.Env().Undefined();
  }

  Napi::Value Consume(const Napi::CallbackInfo& info) {
    Cmd c{};
    c.type = Cmd::Consume;
    c.conn = info[0].ToNumber().Uint32Value();
    c.stream = info[1].ToNumber().Int64Value();
    c.n = static_cast<uint64_t>(info[2].ToNumber().DoubleValue());
    Ep(info)->Command(std::move(c));
    return info.Env().Undefined();
  }

  Napi::Value ResetStream(const Napi::CallbackInfo& info) {
    Cmd c{};
    c.type = Cmd::Reset;
    c.conn = info[0].ToNumber().Uint32Value();
    c.stream = info[1].ToNumber().Int64Value();
    c.n = info.Length() > 2 ? static_cast<uint64_t>(info[2].ToNumber().DoubleValue()) : 0;
    Ep(info)->Command(std::move(c));
    return info.Env().Undefined();
  }

  Napi::Value CloseConnection(const Napi::CallbackInfo& info) {
    Cmd c{};
    c.type = Cmd::Close;
    c.conn = info[0].ToNumber().Uint32Value();
    Ep(info)->Command(std::move(c));
    return info.Env().Undefined();
  }

  // sendDatagram(ip, port, data) -> sent: a hole-punch datagram (kPunchMagic
  // first, at most kPunchMax bytes; anything else is a TypeError), rate limited.
  Napi::Value SendDatagram(const Napi::CallbackInfo& info) {
    Endpoint* ep = Ep(info);
    if (info.Length() < 3 || !info[2].IsTypedArray()) throw Napi::TypeError::New(info.Env(), "sendDatagram(ip, port, data)");
    sockaddr_storage to;
    socklen_t tolen;
    std::string ip = info[0].ToString().Utf8Value();
    int port = info[1].ToNumber().Int32Value();
    if (port <= 0 || port > 65535 || !ParseAddr(ip, port, &to, &tolen)) throw Napi::TypeError::New(info.Env(), "not an IP address and port: " + ip);
    if (to.ss_family != ep->local.ss_family) throw Napi::TypeError::New(info.Env(), "address family differs from the endpoint's");
    auto a = info[2].As<Napi::Uint8Array>();
    if (!IsPunchDatagram(a.Data(), a.ByteLength())) throw Napi::TypeError::New(info.Env(), "only hole-punch datagrams (magic first, at most 64 bytes) may be sent");
    return Napi::Boolean::New(info.Env(), ep->SendPunch(to, tolen, a.Data(), a.ByteLength()));
  }

  Napi::Value StatsM(const Napi::CallbackInfo& info) {
    Endpoint* ep = Ep(info);
    auto o = Napi::Object::New(info.Env());
    auto& s = ep->st;
    auto set = [&](const char* k, uint64_t v) { o.Set(k, Napi::Number::New(info.Env(), static_cast<double>(v))); };
    set("datagramsIn", s.datagramsIn);
    set("datagramsOut", s.datagramsOut);
    set("sendCalls", s.sendCalls);
    set("recvCalls", s.recvCalls);
    set("bytesIn", s.bytesIn);
    set("bytesOut", s.bytesOut);
    set("dropped", s.dropped);
    set("evicted", s.evicted);
    set("refused", s.refused);
    set("statelessResets", s.resets);
    set("maxDatagramOut", s.maxDatagramOut);
    set("punchOut", s.punchOut);
    set("punchIn", s.punchIn);
    set("punchLimited", s.punchLimited);
    o.Set("gso", Napi::Boolean::New(info.Env(), ep->o.gso && ep->gsoOk));
    return o;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }
};

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("available", Napi::Boolean::New(env, true));
  exports.Set("version", Napi::String::New(env, std::string("ngtcp2 ") + ngtcp2_version(0)->version_str + ", GnuTLS " + gnutls_check_version(nullptr)));
  exports.Set("QuicEndpoint", QuicEndpointWrap::Define(env));
  // verifyCertificate(der) -> the proven Ed25519 key, or a thrown reason (tests compare it with crypto/peer-cert.ts).
  exports.Set("verifyCertificate", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsTypedArray()) throw Napi::TypeError::New(info.Env(), "verifyCertificate(der: Uint8Array)");
    auto a = info[0].As<Napi::Uint8Array>();
    gnutls_datum_t d{a.Data(), static_cast<unsigned>(a.ByteLength())};
    uint8_t key[32];
    std::string err = QuicVerifyCertificate(d, key);
    if (!err.empty()) throw Napi::Error::New(info.Env(), err);
    return Napi::Buffer<uint8_t>::Copy(info.Env(), key, 32);
  }));
  return exports;
}

}  // namespace qm

static Napi::Object InitQuic(Napi::Env env, Napi::Object exports) { return qm::Init(env, exports); }

NODE_API_MODULE(quicmap_quic, InitQuic)
