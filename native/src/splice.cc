// The relay's circuit forwarding on a native thread: splice(2) from one TCP
// socket into a pipe and from the pipe into the other socket, both ways, so
// circuit bytes never enter user space (p2p/relay/server.ts hands a circuit
// over once both ends arrived; the JS path stays as the fallback).
//
// Why: forwarding in JS costs a socket read per 64 KiB callback, a Buffer
// per chunk and a write with its callback; on a small machine that also runs
// both peers the relay then takes CPU the peers need.
//
// Semantics kept from the JS path:
// - backpressure: a direction reads from its source only while its pipe has
//   room and writes only what the pipe holds; memory is bounded by the two
//   pipes (the kernel's socket buffers do the rest);
// - half-close: EOF on a source, once its pipe drained, is shutdown(SHUT_WR)
//   on the destination; the circuit ends when both directions did;
// - byte cap: `capBytes` is the budget left for both directions together;
//   the byte that would pass it is not read, the circuit ends with 'cap'
//   (what was within the budget is delivered first, for a bounded time);
// - an error on either socket (ECONNRESET, EPIPE, …) or a stop from JS ends
//   the circuit at once.
//
// The thread works on its own dup'd descriptors: closing them sends nothing
// while JS still holds the originals, so JS decides when peers see the FIN
// (the relay's 'closed' notices go first).
//
// Counters: bytes moved (read from a source) per direction are atomics that
// JS can read at any time with relaySpliceBytes(id), exact up to that
// moment; 'progress' events carry them too (at most every ~100 ms), and the
// 'closed' event carries the final ones. A circuit's entry stays registered
// until JS received 'closed', so its counts never disappear in between.
#include "common.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>

namespace qm {

namespace {

// The pipe size asked for by default (F_SETPIPE_SZ); the kernel may give less (pipe-max-size for non-root).
constexpr int kPipeSize = 1 << 20;
// The largest splice asked for at once.
constexpr size_t kSpliceMax = 1 << 20;
constexpr double kProgressEvery = 0.1;
// After the cap is hit: how long what was within the budget may take to reach its destination.
constexpr int kCapDrainMs = 2000;

struct Event {
  bool done = false;
  double ab = 0, ba = 0;
  std::string reason;  // closed: 'end' | 'cap' | 'stop' | 'error'
  std::string error;   // closed with 'error': the errno name
  std::string side;    // closed with 'error': 'a' | 'b'
};
struct Circuit;
void DeliverEvent(Napi::Env env, Napi::Function cb, Circuit* c, Event* e);
using EventFn = Napi::TypedThreadSafeFunction<Circuit, Event, DeliverEvent>;

// Never destroyed: circuit threads may still run while the process exits.
std::mutex& g_mu = *new std::mutex();
std::unordered_map<uint32_t, Circuit*>& g_circuits = *new std::unordered_map<uint32_t, Circuit*>();
uint32_t g_next = 1;

double Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

// One direction: src -> pipe -> dst.
struct Dir {
  int src = -1, dst = -1;
  int pipe[2] = {-1, -1};
  size_t inPipe = 0;
  std::string head;  // bytes JS had read already: sent before anything spliced
  size_t headAt = 0;
  bool inReady = true, outReady = true;
  bool pipeFull = false;  // the last splice in failed with bytes in the pipe: wait for a drain
  bool eof = false, shut = false;
  std::atomic<uint64_t> bytes{0};
};

struct Circuit {
  uint32_t id = 0;
  int fd[2] = {-1, -1};
  int efd = -1;
  bool capped = false;
  uint64_t budget = 0;
  std::string name;
  std::atomic<bool> stop{false};
  std::atomic<bool> finished{false};
  EventFn events;
  Dir dir[2];

  ~Circuit() {
    CloseAll();
    if (efd >= 0) close(efd);
  }

  void CloseAll() {
    for (Dir& d : dir)
      for (int& p : d.pipe)
        if (p >= 0) close(p), p = -1;
    for (int& f : fd)
      if (f >= 0) close(f), f = -1;
  }

  uint64_t Total() const { return dir[0].bytes.load(std::memory_order_relaxed) + dir[1].bytes.load(std::memory_order_relaxed); }

  void Post(Event* e) {
    if (events.NonBlockingCall(e) != napi_ok) delete e;
  }

  void Progress() {
    auto* e = new Event();
    e->ab = static_cast<double>(dir[0].bytes.load());
    e->ba = static_cast<double>(dir[1].bytes.load());
    Post(e);
  }

  // Moves what it can for direction d without blocking. Returns true when
  // anything happened; sets err (and errSide) on a socket error.
  bool Step(Dir& d, bool capHit, bool* capNow, int* err, int* errFd) {
    bool moved = false;
    // Bytes JS had read go first, with send (they are not in any pipe).
    while (d.headAt < d.head.size() && d.outReady) {
      ssize_t r = send(d.dst, d.head.data() + d.headAt, d.head.size() - d.headAt, MSG_NOSIGNAL);
      if (r > 0) {
        d.headAt += r, moved = true;
        continue;
      }
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        d.outReady = false;
        break;
      }
      *err = r < 0 ? errno : EPIPE, *errFd = d.dst;
      return true;
    }
    if (d.headAt < d.head.size()) return moved;
    if (!d.head.empty()) d.head.clear(), d.head.shrink_to_fit(), d.headAt = 0;
    if (!d.eof && d.inReady && !d.pipeFull && !capHit) {
      size_t want = kSpliceMax;
      if (capped) want = static_cast<size_t>(std::min<uint64_t>(want, budget - std::min(budget, Total())));
      if (want == 0) {
        // Budget spent: one more byte means the cap; EOF is still a clean end.
        char c;
        ssize_t r = recv(d.src, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r > 0) {
          *capNow = true;
          moved = true;
        } else if (r == 0) {
          d.eof = true, moved = true;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
          d.inReady = false;
        } else if (errno != EINTR) {
          *err = errno, *errFd = d.src;
          return true;
        }
      } else {
        ssize_t r = splice(d.src, nullptr, d.pipe[1], nullptr, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (r > 0) {
          d.inPipe += r, moved = true;
          d.bytes.fetch_add(r, std::memory_order_relaxed);
        } else if (r == 0) {
          d.eof = true, moved = true;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
          // With bytes in the pipe this may be the pipe (its slots), not the socket.
          if (d.inPipe > 0) d.pipeFull = true;
          else d.inReady = false;
        } else if (errno != EINTR) {
          *err = errno, *errFd = d.src;
          return true;
        }
      }
    }
    if (d.inPipe > 0 && d.outReady) {
      ssize_t r = splice(d.pipe[0], nullptr, d.dst, nullptr, d.inPipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (r > 0) {
        d.inPipe -= r, moved = true;
        d.pipeFull = false;
      } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        d.outReady = false;
      } else if (r < 0 && errno != EINTR) {
        *err = errno, *errFd = d.dst;
        return true;
      }
    }
    if (d.eof && d.inPipe == 0 && !d.shut) {
      shutdown(d.dst, SHUT_WR);
      d.shut = true, moved = true;
    }
    return moved;
  }

  void Run(Event* out) {
    bool capHit = false;
    double capDeadline = 0, lastProgress = Now();
    uint64_t lastTotal = Total();
    auto fail = [&](int err, int which) {
      out->reason = "error";
      out->error = ErrnoName(err);
      out->side = which == fd[0] ? "a" : "b";
    };
    for (;;) {
      if (stop.load()) {
        out->reason = "stop";
        return;
      }
      bool moved = false;
      int err = 0, errFd = -1;
      for (Dir& d : dir) {
        bool capNow = false;
        moved |= Step(d, capHit, &capNow, &err, &errFd);
        if (err) break;
        if (capNow && !capHit) capHit = true, capDeadline = Now() + kCapDrainMs / 1000.0;
      }
      if (err) return fail(err, errFd);
      if (dir[0].shut && dir[1].shut) {
        out->reason = "end";
        return;
      }
      bool pending = false;
      for (Dir& d : dir) pending |= d.inPipe > 0 || d.headAt < d.head.size();
      if (capHit && !pending) {
        out->reason = "cap";
        return;
      }
      uint64_t total = Total();
      double now = Now();
      if (total != lastTotal && now - lastProgress >= kProgressEvery) {
        lastProgress = now, lastTotal = total;
        Progress();
      }
      // What each direction waits for. While bytes move, a zero-timeout poll
      // only refreshes the readiness of the other direction.
      pollfd p[3] = {{fd[0], 0, 0}, {fd[1], 0, 0}, {efd, POLLIN, 0}};
      for (int i = 0; i < 2; i++) {
        Dir& d = dir[i];
        if (!d.eof && !d.inReady && !d.pipeFull && !capHit) p[i].events |= POLLIN;
        if ((d.inPipe > 0 || d.headAt < d.head.size()) && !d.outReady) p[1 - i].events |= POLLOUT;
      }
      // A socket done both ways (read to EOF, shut towards) has nothing more
      // to say; left in, its POLLHUP would spin the loop.
      for (int i = 0; i < 2; i++)
        if (!p[i].events && dir[i].eof && dir[1 - i].shut) p[i].fd = -1;
      int timeout = -1;
      if (moved) {
        timeout = 0;
      } else if (capHit) {
        timeout = static_cast<int>((capDeadline - now) * 1000);
        if (timeout <= 0) {
          out->reason = "cap";
          return;
        }
      } else if (total != lastTotal) {
        // Bytes moved since the last progress event: report them when things go quiet.
        timeout = std::max(1, static_cast<int>((lastProgress + kProgressEvery - now) * 1000) + 1);
      }
      int r = poll(p, 3, timeout);
      if (r < 0) {
        if (errno == EINTR) continue;
        return fail(errno, fd[0]);
      }
      if (p[2].revents) {
        uint64_t v;
        (void)!read(efd, &v, sizeof v);
      }
      for (int i = 0; i < 2; i++) {
        short ev = p[i].revents;
        if (!ev) continue;
        if (ev & POLLERR) {
          int se = 0;
          socklen_t len = sizeof se;
          if (getsockopt(fd[i], SOL_SOCKET, SO_ERROR, &se, &len) == 0 && se != 0) return fail(se, fd[i]);
        }
        // Both ways shut on a socket we did not shut down towards: it is
        // gone (reset, timed out), as the JS path's 'close' would say.
        if ((ev & POLLHUP) && !dir[1 - i].shut) return fail(ECONNRESET, fd[i]);
        if (ev & (POLLIN | POLLHUP | POLLERR)) dir[i].inReady = true;
        if (ev & (POLLOUT | POLLERR)) dir[1 - i].outReady = true;
      }
    }
  }
};

void DeliverEvent(Napi::Env env, Napi::Function cb, Circuit* c, Event* e) {
  if (e->done) {
    // JS has the final counts from here on: the entry can go.
    {
      std::lock_guard<std::mutex> lk(g_mu);
      g_circuits.erase(c->id);
    }
    delete c;
  }
  if (env != nullptr && cb) {
    try {
      auto s = Napi::Object::New(env);
      s.Set("bytesAB", e->ab);
      s.Set("bytesBA", e->ba);
      if (e->done) {
        s.Set("reason", e->reason);
        if (!e->error.empty()) {
          s.Set("error", e->error);
          s.Set("side", e->side);
        }
      }
      cb.Call({Napi::String::New(env, e->done ? "closed" : "progress"), s});
    } catch (const Napi::Error&) {
    }
  }
  delete e;
}

void* ThreadMain(void* arg) {
  Circuit* c = static_cast<Circuit*>(arg);
  // Named for top -H / perf: "qm " + the caller's name, in the kernel's 15 bytes.
  pthread_setname_np(pthread_self(), ("qm " + c->name).substr(0, 15).c_str());
  auto* done = new Event();
  done->done = true;
  c->Run(done);
  // Our descriptors go now; JS's own copies keep the connections up until it destroys them.
  c->CloseAll();
  done->ab = static_cast<double>(c->dir[0].bytes.load());
  done->ba = static_cast<double>(c->dir[1].bytes.load());
  c->finished.store(true);
  EventFn events = c->events;
  // From here `c` belongs to DeliverEvent (it deletes it with the 'closed' event).
  if (events.BlockingCall(done) != napi_ok) delete done;
  events.Release();
  return nullptr;
}

int DupNonblock(int fd) {
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) return -1;
  // O_NONBLOCK is on the open file, shared with JS's descriptor (libuv set it already).
  int fl = fcntl(d, F_GETFL);
  if (fl >= 0 && !(fl & O_NONBLOCK)) fcntl(d, F_SETFL, fl | O_NONBLOCK);
  return d;
}

std::string Bytes(const Napi::Value& v) {
  if (!v.IsTypedArray()) return std::string();
  auto a = v.As<Napi::Uint8Array>();
  return std::string(reinterpret_cast<const char*>(a.Data()), a.ByteLength());
}

// relaySplice({a, b, capBytes?, headAB?, headBA?, name}, onEvent(kind, counts)) -> id
// Forwards between sockets a and b (dup'd here; the caller keeps its own
// descriptors open and must not read from them). capBytes: the budget left
// for both directions together (absent: no limit). headAB / headBA: bytes
// already read from a (for b) / from b (for a), sent first. onEvent gets
// ('progress', {bytesAB, bytesBA}) and, last, ('closed', {bytesAB, bytesBA,
// reason, error?, side?}).
Napi::Value RelaySplice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsObject() || !info[1].IsFunction()) throw Napi::TypeError::New(env, "relaySplice(opts, onEvent)");
  auto o = info[0].As<Napi::Object>();
  auto c = std::make_unique<Circuit>();
  c->name = o.Get("name").IsString() ? o.Get("name").As<Napi::String>().Utf8Value() : std::string();
  auto cap = o.Get("capBytes");
  if (!cap.IsUndefined() && !cap.IsNull()) {
    double v = cap.As<Napi::Number>().DoubleValue();
    if (!(v >= 0)) throw Napi::RangeError::New(env, "relaySplice: capBytes must be >= 0");
    c->capped = true;
    c->budget = static_cast<uint64_t>(v);
  }
  int fds[2] = {static_cast<int>(o.Get("a").As<Napi::Number>().Int32Value()), static_cast<int>(o.Get("b").As<Napi::Number>().Int32Value())};
  for (int i = 0; i < 2; i++) {
    int sotype = 0;
    socklen_t len = sizeof sotype;
    if (fds[i] < 0 || getsockopt(fds[i], SOL_SOCKET, SO_TYPE, &sotype, &len) != 0 || sotype != SOCK_STREAM) {
      throw ErrnoError(env, fds[i] < 0 ? EBADF : (errno ? errno : ENOTSOCK), "relaySplice: not a stream socket");
    }
    c->fd[i] = DupNonblock(fds[i]);
    if (c->fd[i] < 0) ThrowErrno(env, errno, "relaySplice: dup");
  }
  c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (c->efd < 0) ThrowErrno(env, errno, "eventfd");
  int pipeSize = kPipeSize;
  if (o.Get("pipeSize").IsNumber()) pipeSize = std::max(4096, std::min(64 << 20, o.Get("pipeSize").As<Napi::Number>().Int32Value()));
  for (int i = 0; i < 2; i++) {
    Dir& d = c->dir[i];
    d.src = c->fd[i];
    d.dst = c->fd[1 - i];
    if (pipe2(d.pipe, O_NONBLOCK | O_CLOEXEC) != 0) ThrowErrno(env, errno, "pipe2");
    // A bigger pipe means fewer wakeups per byte; keep the default if refused.
    (void)fcntl(d.pipe[1], F_SETPIPE_SZ, pipeSize);
  }
  c->dir[0].head = Bytes(o.Get("headAB"));
  c->dir[1].head = Bytes(o.Get("headBA"));
  c->events = EventFn::New(env, info[1].As<Napi::Function>(), "quicmap-relay-splice", 0, 1, c.get());
  // Kept referenced: a live circuit keeps the process alive, as its sockets
  // would if Node read them (and its 'closed' event must get through).
  {
    std::lock_guard<std::mutex> lk(g_mu);
    c->id = g_next++;
    g_circuits[c->id] = c.get();
  }
  uint32_t id = c->id;
  int err = StartDetachedThread(ThreadMain, c.get(), 128 * 1024);
  if (err) {
    {
      std::lock_guard<std::mutex> lk(g_mu);
      g_circuits.erase(id);
    }
    c->events.Release();
    ThrowErrno(env, err, "pthread_create");
  }
  c.release();
  return Napi::Number::New(env, id);
}

// relaySpliceStop(id): end the circuit soon ('closed' with reason 'stop'). False when it had ended already.
Napi::Value RelaySpliceStop(const Napi::CallbackInfo& info) {
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  std::lock_guard<std::mutex> lk(g_mu);
  auto it = g_circuits.find(id);
  if (it == g_circuits.end() || it->second->finished.load()) return Napi::Boolean::New(info.Env(), false);
  Circuit* c = it->second;
  c->stop.store(true);
  uint64_t one = 1;
  // efd is closed only when the entry goes (on this thread), so it is still open here.
  (void)!write(c->efd, &one, sizeof one);
  return Napi::Boolean::New(info.Env(), true);
}

// relaySpliceBytes(id) -> [bytesAB, bytesBA] moved so far, or undefined once JS had 'closed'.
Napi::Value RelaySpliceBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  std::lock_guard<std::mutex> lk(g_mu);
  auto it = g_circuits.find(id);
  if (it == g_circuits.end()) return env.Undefined();
  auto a = Napi::Array::New(env, 2);
  a.Set(0u, Napi::Number::New(env, static_cast<double>(it->second->dir[0].bytes.load())));
  a.Set(1u, Napi::Number::New(env, static_cast<double>(it->second->dir[1].bytes.load())));
  return a;
}

}  // namespace

void SpliceInit(Napi::Env env, Napi::Object exports) {
  exports.Set("relaySplice", Napi::Function::New(env, RelaySplice, "relaySplice"));
  exports.Set("relaySpliceStop", Napi::Function::New(env, RelaySpliceStop, "relaySpliceStop"));
  exports.Set("relaySpliceBytes", Napi::Function::New(env, RelaySpliceBytes, "relaySpliceBytes"));
}

}  // namespace qm
