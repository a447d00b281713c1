// The NBD transmission phase on a native thread, for exports whose bytes sit
// in shared memory (engine/backends/shared-memory.ts: memfd slabs plus a map
// of written chunks). JS keeps the control path (accept, admission, the
// handshake, shutdown, logs); once a client has negotiated such an export
// its socket is handed to a thread here that runs recv / parse / copy / send
// for every command, one request at a time.
//
// Why: the JS data path (even on worker threads) costs a 64 KiB socket read
// per callback, a copy from Node's read buffer into the store and a promise
// chain per request. Here a WRITE payload is received straight into the
// shared pages (the kernel's copy is the only one) and a READ reply is one
// sendmsg whose iovecs point at the pages (and at a static zero page for
// chunks never written): no user-space copy at all.
//
// Memory: a connection holds a fixed few KiB (its thread's small stack, a
// header buffer) whatever the client does; a client that does not read its
// replies stalls its own thread in poll, and the kernel's socket buffers
// are all that is queued. Requests are served in order, one at a time, as
// an NBD server may.
//
// Shutdown: nbdServeStop(id, false) lets a reply being sent finish and
// stops before the next request (a request not fully received was never
// acknowledged); nbdServeStop(id, true) stops at once, mid-send.
#include "common.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <linux/falloc.h>

#include <climits>
#include <cstdlib>

#include <algorithm>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace qm {

namespace {

constexpr uint32_t kRequestMagic = 0x25609513;
constexpr uint32_t kSimpleMagic = 0x67446698;
constexpr uint32_t kStructuredMagic = 0x668e33ef;
constexpr uint16_t kFlagDone = 1;
constexpr uint16_t kTypeNone = 0;
constexpr uint16_t kTypeOffsetData = 1;
constexpr uint16_t kTypeBlockStatus = 5;
constexpr uint16_t kTypeError = (1 << 15) + 1;
constexpr uint32_t kMetaBaseAllocation = 1;
constexpr uint32_t kStateHole = 1, kStateZero = 2;

enum : uint16_t { READ = 0, WRITE = 1, DISC = 2, FLUSH = 3, TRIM = 4, CACHE = 5, WRITE_ZEROES = 6, BLOCK_STATUS = 7 };
constexpr uint16_t FUA = 1, NO_HOLE = 2, REQ_ONE = 8, FAST_ZERO = 16;

constexpr uint32_t EPERM_ = 1, EIO_ = 5, EINVAL_ = 22, ENOSPC_ = 28;

constexpr size_t kZeroSize = 1 << 20;
const uint8_t* ZeroPage() {
  static uint8_t* z = static_cast<uint8_t*>(calloc(kZeroSize, 1));
  return z;
}

inline uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline uint32_t Be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }
inline uint64_t Be64(const uint8_t* p) { return uint64_t(Be32(p)) << 32 | Be32(p + 4); }
inline void Put16(uint8_t* p, uint16_t v) { p[0] = v >> 8, p[1] = v & 0xff; }
inline void Put32(uint8_t* p, uint32_t v) { p[0] = v >> 24, p[1] = (v >> 16) & 0xff, p[2] = (v >> 8) & 0xff, p[3] = v & 0xff; }
inline void Put64(uint8_t* p, uint64_t v) { Put32(p, uint32_t(v >> 32)), Put32(p + 4, uint32_t(v)); }

// What a thread reports to JS: log lines (rate-limited here) and, last, its end.
struct Event {
  bool done = false;
  std::string text;
  double reads = 0, writes = 0, bytesRead = 0, bytesWritten = 0;
};
void DeliverEvent(Napi::Env env, Napi::Function cb, std::nullptr_t*, Event* e);
using EventFn = Napi::TypedThreadSafeFunction<std::nullptr_t, Event, DeliverEvent>;

struct Conn;
// Never destroyed: connection threads may still run while the process exits.
std::mutex& g_mu = *new std::mutex();
std::unordered_map<uint32_t, Conn*>& g_conns = *new std::unordered_map<uint32_t, Conn*>();
uint32_t g_next = 1;

struct Conn {
  uint32_t id = 0;
  int fd = -1;
  int efd = -1;
  int memfd = -1;
  std::vector<Mapping*> slabs;
  uint64_t slabSize = 0;
  uint64_t size = 0;
  uint8_t* written = nullptr;
  uint64_t chunk = 65536;
  bool readOnly = false, structured = false, blockStatus = false;
  uint64_t maxPayload = 0;
  std::string rest;
  size_t restAt = 0;
  std::string name;
  std::atomic<int> stop{0};  // 1: graceful, 2: at once
  EventFn events;
  Event stats;
  // Log rate limit: 5 lines per 10 s, then a count of the suppressed ones.
  int logBurst = 0;
  double logWindow = 0;
  uint64_t suppressed = 0;
  std::vector<iovec> iov;
  std::vector<uint8_t> scratch;

  ~Conn() {
    for (Mapping* m : slabs) MappingUnref(m);
    if (fd >= 0) close(fd);
    if (efd >= 0) close(efd);
    if (memfd >= 0) close(memfd);
  }

  static double Now() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
  }

  void Log(const std::string& line) {
    double now = Now();
    if (now - logWindow >= 10) {
      if (suppressed) Post("nbd: " + std::to_string(suppressed) + " more lines like these suppressed");
      logWindow = now, logBurst = 0, suppressed = 0;
    }
    if (logBurst >= 5) {
      suppressed++;
      return;
    }
    logBurst++;
    Post(line);
  }
  void Post(const std::string& line) {
    auto* e = new Event();
    e->text = line;
    if (events.NonBlockingCall(e) != napi_ok) delete e;
  }

  // Wait until the socket is ready for `ev`. Stops: graceful ones only when
  // `cancellable` (between requests, or mid-request while receiving).
  int Wait(short ev, bool cancellable) {
    for (;;) {
      int s = stop.load();
      if (s == 2 || (s == 1 && cancellable)) return ECANCELED;
      pollfd p[2] = {{fd, ev, 0}, {efd, POLLIN, 0}};
      int r = poll(p, 2, -1);
      if (r < 0) {
        if (errno == EINTR) continue;
        return errno;
      }
      if (p[1].revents) {
        uint64_t v;
        (void)!read(efd, &v, sizeof v);
        continue;
      }
      if (p[0].revents & (ev | POLLHUP | POLLERR)) return 0;
    }
  }

  // Receive exactly n bytes into buf (0 on success, -1 on a clean EOF before any byte).
  int Recv(uint8_t* buf, size_t n, bool atStart) {
    if (restAt < rest.size()) {
      size_t m = std::min(n, rest.size() - restAt);
      memcpy(buf, rest.data() + restAt, m);
      restAt += m, buf += m, n -= m;
      atStart = false;
      if (restAt == rest.size()) rest.clear(), restAt = 0;
    }
    while (n > 0) {
      ssize_t r = recv(fd, buf, n, MSG_WAITALL);
      if (r > 0) {
        buf += r, n -= r;
        atStart = false;
        continue;
      }
      if (r == 0) return atStart ? -1 : EPIPE;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return errno;
      if (int e = Wait(POLLIN, true)) return e;
    }
    return 0;
  }

  // Send the iovecs in `iov` whole. Only a forced stop interrupts.
  int Send() {
    size_t at = 0;
    while (at < iov.size()) {
      msghdr msg{};
      msg.msg_iov = &iov[at];
      msg.msg_iovlen = std::min<size_t>(iov.size() - at, IOV_MAX);
      ssize_t r = sendmsg(fd, &msg, MSG_NOSIGNAL);
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return errno;
        if (int e = Wait(POLLOUT, false)) return e;
        continue;
      }
      size_t left = static_cast<size_t>(r);
      while (left > 0 && at < iov.size()) {
        if (left >= iov[at].iov_len) {
          left -= iov[at].iov_len;
          at++;
        } else {
          iov[at].iov_base = static_cast<uint8_t*>(iov[at].iov_base) + left;
          iov[at].iov_len -= left;
          left = 0;
        }
      }
      while (at < iov.size() && iov[at].iov_len == 0) at++;
    }
    iov.clear();
    return 0;
  }

  uint8_t* At(uint64_t off) { return slabs[off / slabSize]->addr + off % slabSize; }

  // Append the mapping's bytes [off, off+len) to iov, split at slab edges;
  // chunks never written come from the zero page (reading a shmem hole
  // through the mapping would allocate it).
  void AddData(uint64_t off, uint64_t len) {
    while (len > 0) {
      uint64_t c = off / chunk;
      uint64_t n = std::min(len, (c + 1) * chunk - off);
      if (!written[c]) {
        // Runs of holes: one iovec per zero-page length.
        uint64_t end = off + n;
        while (end < off + len && !written[end / chunk]) end = std::min(off + len, (end / chunk + 1) * chunk);
        for (uint64_t z = off; z < end; z += kZeroSize) Push(const_cast<uint8_t*>(ZeroPage()), std::min<uint64_t>(kZeroSize, end - z));
        len -= end - off, off = end;
        continue;
      }
      uint64_t slabLeft = slabSize - off % slabSize;
      n = std::min(n, slabLeft);
      Push(At(off), n);
      off += n, len -= n;
    }
  }
  void Push(uint8_t* p, size_t n) {
    if (!iov.empty() && static_cast<uint8_t*>(iov.back().iov_base) + iov.back().iov_len == p && p != ZeroPage()) {
      iov.back().iov_len += n;
      return;
    }
    iov.push_back({p, n});
  }

  void MarkWritten(uint64_t off, uint64_t len) {
    if (len == 0) return;
    for (uint64_t c = off / chunk, last = (off + len - 1) / chunk; c <= last; c++)
      if (!written[c]) written[c] = 1;
  }

  // Zero bytes that may hold data, through the memfd (a kernel copy: a
  // closed mapping cannot fault this thread).
  int Fill(uint64_t off, uint64_t len) {
    while (len > 0) {
      uint64_t c = off / chunk;
      uint64_t n = std::min(len, (c + 1) * chunk - off);
      if (written[c]) {
        for (uint64_t done = 0; done < n;) {
          ssize_t r = pwrite(memfd, ZeroPage(), std::min<uint64_t>(n - done, kZeroSize), off + done);
          if (r < 0) {
            if (errno == EINTR) continue;
            return errno;
          }
          done += r;
        }
      }
      off += n, len -= n;
    }
    return 0;
  }

  // TRIM and WRITE_ZEROES, as SharedMemoryBackend.zero: chunks covered whole
  // become holes again (their pages punched out) unless `keep`.
  int Zero(uint64_t off, uint64_t len, bool keep) {
    if (len == 0) return 0;
    uint64_t end = off + len;
    uint64_t first = (off + chunk - 1) / chunk;
    uint64_t last = end == size ? (end + chunk - 1) / chunk : end / chunk;
    if (keep || last <= first) {
      if (int e = Fill(off, len)) return e;
      if (keep) MarkWritten(off, len);
      return 0;
    }
    uint64_t from = first * chunk, to = std::min(last * chunk, size);
    if (from > off)
      if (int e = Fill(off, from - off)) return e;
    memset(written + first, 0, last - first);
    uint64_t punch = (to - from + 4095) / 4096 * 4096;
    if (fallocate(memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, from, punch) != 0 && errno != EOPNOTSUPP) return errno;
    if (end > to) return Fill(to, end - to);
    return 0;
  }

  // Reply headers live in `head` until the reply is sent.
  uint8_t head[64];

  size_t ReplyHeader(const uint8_t* handle, uint16_t type, uint32_t payload, uint32_t err) {
    if (!structured) {
      Put32(head, kSimpleMagic);
      Put32(head + 4, err);
      memcpy(head + 8, handle, 8);
      return 16;
    }
    Put32(head, kStructuredMagic);
    Put16(head + 4, kFlagDone);
    Put16(head + 6, type);
    memcpy(head + 8, handle, 8);
    Put32(head + 16, payload);
    return 20;
  }

  int Ok(const uint8_t* handle) {
    iov.push_back({head, ReplyHeader(handle, kTypeNone, 0, 0)});
    return Send();
  }

  std::string errMsg;
  int Error(const uint8_t* handle, uint16_t cmd, uint32_t err, const std::string& why) {
    static const char* names[] = {"READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS", "RESIZE"};
    std::string what = cmd < 9 ? names[cmd] : "CMD_" + std::to_string(cmd);
    Log("nbd: " + name + ": " + what + " " + why);
    if (!structured) {
      iov.push_back({head, ReplyHeader(handle, 0, 0, err)});
      return Send();
    }
    errMsg = (what + " " + why).substr(0, 200);
    size_t h = ReplyHeader(handle, kTypeError, static_cast<uint32_t>(6 + errMsg.size()), 0);
    Put32(head + h, err);
    Put16(head + h + 4, static_cast<uint16_t>(errMsg.size()));
    iov.push_back({head, h + 6});
    if (!errMsg.empty()) iov.push_back({errMsg.data(), errMsg.size()});
    return Send();
  }

  // Discard n payload bytes (a WRITE that is refused).
  int Skip(uint64_t n) {
    if (scratch.empty()) scratch.resize(65536);
    while (n > 0) {
      size_t m = std::min<uint64_t>(n, scratch.size());
      if (int e = Recv(scratch.data(), m, false)) return e;
      n -= m;
    }
    return 0;
  }

  std::vector<uint8_t> extents;
  int BlockStatus(const uint8_t* handle, uint64_t off, uint32_t len, bool one) {
    extents.clear();
    uint64_t end = off + len;
    uint32_t curFlags = 0;
    uint64_t curLen = 0;
    auto flush = [&] {
      // Descriptors are 32-bit: longer runs are split.
      while (curLen > 0) {
        uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(curLen, 0x80000000u));
        size_t at = extents.size();
        extents.resize(at + 8);
        Put32(&extents[at], n);
        Put32(&extents[at + 4], curFlags);
        curLen -= n;
      }
    };
    for (uint64_t at = off; at < end;) {
      uint64_t c = at / chunk;
      uint64_t n = std::min(end - at, (c + 1) * chunk - at);
      uint32_t flags = written[c] ? 0 : (kStateHole | kStateZero);
      if (curLen && flags != curFlags) {
        flush();
        if (one) break;
      }
      curFlags = flags;
      curLen += n;
      at += n;
    }
    flush();
    // REQ_ONE: the first descriptor only.
    if (one && extents.size() > 8) extents.resize(8);
    size_t h = ReplyHeader(handle, kTypeBlockStatus, static_cast<uint32_t>(4 + extents.size()), 0);
    Put32(head + h, kMetaBaseAllocation);
    iov.push_back({head, h + 4});
    iov.push_back({extents.data(), extents.size()});
    return Send();
  }

  // One request. Returns 0 to go on, -1 to end cleanly, or an errno.
  int Serve() {
    if (stop.load()) return ECANCELED;
    uint8_t h[28];
    if (int e = Recv(h, sizeof h, true)) return e;
    if (Be32(h) != kRequestMagic) {
      char buf[64];
      snprintf(buf, sizeof buf, "bad request magic 0x%x", Be32(h));
      Log(std::string("nbd: dropping client: ") + buf);
      return -1;
    }
    uint16_t flags = Be16(h + 4), type = Be16(h + 6);
    const uint8_t* handle = h + 8;
    uint64_t off = Be64(h + 16);
    uint32_t len = Be32(h + 24);
    bool outside = off > size || len > size - off;
    uint16_t known = 0;
    switch (type) {
      case WRITE: case TRIM: known = FUA; break;
      case WRITE_ZEROES: known = FUA | NO_HOLE | FAST_ZERO; break;
      case BLOCK_STATUS: known = REQ_ONE; break;
      default: known = 0;
    }
    auto range = [&] { return "[" + std::to_string(off) + ", +" + std::to_string(len) + ") beyond size " + std::to_string(size); };
    if (type == WRITE) {
      if (len > maxPayload) {
        if (int e = Skip(len)) return e;
        return Error(handle, type, EINVAL_, "of " + std::to_string(len) + " bytes exceeds the maximum");
      }
      std::string why;
      uint32_t err = 0;
      if (flags & ~known) {
        char buf[48];
        snprintf(buf, sizeof buf, "with unsupported flags 0x%x", flags);
        why = buf, err = EINVAL_;
      } else if (outside) {
        why = range(), err = ENOSPC_;
      } else if (readOnly) {
        why = "to a read-only export", err = EPERM_;
      }
      if (err) {
        if (int e = Skip(len)) return e;
        return Error(handle, type, err, why);
      }
      // Marked before the bytes land: a racing reader sees old or new bytes, never a hole's zeros afterwards.
      MarkWritten(off, len);
      for (uint64_t at = off, end = off + len; at < end;) {
        uint64_t n = std::min(end - at, slabSize - at % slabSize);
        if (int e = Recv(At(at), n, false)) return e;
        at += n;
      }
      stats.writes++, stats.bytesWritten += len;
      return Ok(handle);
    }
    if (type == DISC) return -1;
    if (type == READ && len > maxPayload) return Error(handle, type, EINVAL_, "of " + std::to_string(len) + " bytes exceeds the maximum");
    if (flags & ~known) {
      char buf[48];
      snprintf(buf, sizeof buf, "with unsupported flags 0x%x", flags);
      return Error(handle, type, EINVAL_, buf);
    }
    if (type != FLUSH && outside) return Error(handle, type, type == WRITE_ZEROES ? ENOSPC_ : EINVAL_, range());
    switch (type) {
      case READ: {
        size_t hl = ReplyHeader(handle, kTypeOffsetData, 8 + len, 0);
        if (structured) Put64(head + hl, off), hl += 8;
        iov.push_back({head, hl});
        AddData(off, len);
        stats.reads++, stats.bytesRead += len;
        return Send();
      }
      case FLUSH:
      case CACHE:
        return Ok(handle);
      case TRIM:
      case WRITE_ZEROES: {
        if (readOnly) return Error(handle, type, EPERM_, "on a read-only export");
        if (int e = Zero(off, len, type == WRITE_ZEROES && (flags & NO_HOLE))) {
          return Error(handle, type, EIO_, std::string("failed: ") + strerror(e));
        }
        return Ok(handle);
      }
      case BLOCK_STATUS:
        if (!blockStatus) return Error(handle, type, EINVAL_, "without a negotiated base:allocation context");
        if (len == 0) return Error(handle, type, EINVAL_, "of length 0");
        return BlockStatus(handle, off, len, flags & REQ_ONE);
      default:
        return Error(handle, type, EINVAL_, "is not supported");
    }
  }

  void Run() {
    int e = 0;
    while ((e = Serve()) == 0) {
    }
    if (e > 0 && e != ECANCELED && e != EPIPE && e != ECONNRESET) Log(std::string("nbd: connection error: ") + strerror(e));
    // A client's DISC (or EOF): what it wrote is in memory already; end our side.
    shutdown(fd, SHUT_RDWR);
  }
};

void DeliverEvent(Napi::Env env, Napi::Function cb, std::nullptr_t*, Event* e) {
  if (env != nullptr && cb) {
    try {
      if (e->done) {
        auto s = Napi::Object::New(env);
        s.Set("reads", e->reads);
        s.Set("writes", e->writes);
        s.Set("bytesRead", e->bytesRead);
        s.Set("bytesWritten", e->bytesWritten);
        cb.Call({Napi::String::New(env, "closed"), s});
      } else {
        cb.Call({Napi::String::New(env, "log"), Napi::String::New(env, e->text)});
      }
    } catch (const Napi::Error&) {
    }
  }
  delete e;
}

void* ThreadMain(void* arg) {
  Conn* c = static_cast<Conn*>(arg);
  c->Run();
  {
    std::lock_guard<std::mutex> lk(g_mu);
    g_conns.erase(c->id);
  }
  auto* done = new Event(c->stats);
  done->done = true;
  EventFn events = c->events;
  delete c;  // closes the socket before JS hears that the connection is gone
  if (events.BlockingCall(done) != napi_ok) delete done;
  events.Release();
  return nullptr;
}

// nbdServe({fd, memfd, slabs, slabSize, size, written, chunk, readOnly,
//   structured, blockStatus, maxPayload, rest, name}, onEvent(kind, value)) -> id
// Takes over `fd` (closed when the connection ends). onEvent gets
// ('log', line) and finally ('closed', stats).
Napi::Value NbdServe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto o = info[0].As<Napi::Object>();
  if (!info[1].IsFunction()) throw Napi::TypeError::New(env, "nbdServe: onEvent must be a function");
  auto c = std::make_unique<Conn>();
  auto num = [&](const char* k) { return ToU64(o.Get(k)); };
  auto flag = [&](const char* k) { return o.Get(k).ToBoolean().Value(); };
  c->slabSize = num("slabSize");
  c->size = num("size");
  c->chunk = num("chunk");
  c->maxPayload = num("maxPayload");
  c->readOnly = flag("readOnly");
  c->structured = flag("structured");
  c->blockStatus = flag("blockStatus");
  c->name = o.Get("name").ToString().Utf8Value();
  if (c->slabSize == 0 || c->chunk == 0) throw Napi::RangeError::New(env, "nbdServe: slabSize and chunk must be > 0");
  auto w = o.Get("written");
  if (!w.IsTypedArray()) throw Napi::TypeError::New(env, "nbdServe: written must be a Uint8Array");
  auto wa = w.As<Napi::Uint8Array>();
  if (wa.ByteLength() < (c->size + c->chunk - 1) / c->chunk) throw Napi::RangeError::New(env, "nbdServe: written map too small");
  c->written = wa.Data();
  auto slabs = o.Get("slabs").As<Napi::Array>();
  uint64_t mapped = 0;
  for (uint32_t i = 0; i < slabs.Length(); i++) {
    Mapping* m = MappingFindById(slabs.Get(i).As<Napi::Number>().Uint32Value());
    if (!m) throw ErrnoError(env, ESHUTDOWN, "nbdServe: mapping is closed");
    c->slabs.push_back(m);
    if (i + 1 < slabs.Length() && m->len != c->slabSize) throw Napi::RangeError::New(env, "nbdServe: slab of the wrong size");
    mapped += m->len;
  }
  if (mapped < c->size) throw Napi::RangeError::New(env, "nbdServe: slabs smaller than the region");
  auto rest = o.Get("rest");
  if (rest.IsTypedArray()) {
    auto r = rest.As<Napi::Uint8Array>();
    c->rest.assign(reinterpret_cast<const char*>(r.Data()), r.ByteLength());
  }
  c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (c->efd < 0) ThrowErrno(env, errno, "eventfd");
  int fd = static_cast<int>(num("fd"));
  int memfd = static_cast<int>(num("memfd"));
  // Our own descriptors: the caller may close its copies whenever it likes.
  c->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (c->fd < 0) ThrowErrno(env, errno, "dup");
  c->memfd = fcntl(memfd, F_DUPFD_CLOEXEC, 0);
  if (c->memfd < 0) ThrowErrno(env, errno, "dup");
  int fl = fcntl(c->fd, F_GETFL);
  if (fl >= 0 && !(fl & O_NONBLOCK)) fcntl(c->fd, F_SETFL, fl | O_NONBLOCK);
  c->events = EventFn::New(env, info[1].As<Napi::Function>(), "quicmap-nbd-serve", 0, 1, nullptr);
  // The server's listener keeps the process alive, not its connections (as with worker threads).
  c->events.Unref(env);
  {
    std::lock_guard<std::mutex> lk(g_mu);
    c->id = g_next++;
    g_conns[c->id] = c.get();
  }
  uint32_t id = c->id;
  int err = StartDetachedThread(ThreadMain, c.get(), 256 * 1024);
  if (err) {
    {
      std::lock_guard<std::mutex> lk(g_mu);
      g_conns.erase(id);
    }
    c->events.Release();
    ThrowErrno(env, err, "pthread_create");
  }
  c.release();
  return Napi::Number::New(env, id);
}

// nbdServeStop(id, now): stop before the next request (now: at once). False when it had ended already.
Napi::Value NbdServeStop(const Napi::CallbackInfo& info) {
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  bool now = info[1].ToBoolean().Value();
  std::lock_guard<std::mutex> lk(g_mu);
  auto it = g_conns.find(id);
  if (it == g_conns.end()) return Napi::Boolean::New(info.Env(), false);
  Conn* c = it->second;
  int want = now ? 2 : 1;
  if (c->stop.load() < want) c->stop.store(want);
  uint64_t one = 1;
  (void)!write(c->efd, &one, sizeof one);
  return Napi::Boolean::New(info.Env(), true);
}

}  // namespace

void NbdServeInit(Napi::Env env, Napi::Object exports) {
  exports.Set("nbdServe", Napi::Function::New(env, NbdServe, "nbdServe"));
  exports.Set("nbdServeStop", Napi::Function::New(env, NbdServeStop, "nbdServeStop"));
}

}  // namespace qm
