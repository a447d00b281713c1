// Kernel NBD attach through the classic ioctl interface: the kernel gets one
// end of a socketpair per connection, the in-process NBD server the other
// (already in transmission phase). NBD_DO_IT blocks for the life of the
// device, so it runs on its own thread and reports back when it returns.
#include "common.h"

#include <fcntl.h>
#include <linux/nbd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>
#include <vector>

namespace qm {

namespace {

// socketpair() -> [fdA, fdB] (AF_UNIX, SOCK_STREAM, close-on-exec)
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) ThrowErrno(env, errno, "socketpair");
  auto arr = Napi::Array::New(env, 2);
  arr.Set(0u, sv[0]);
  arr.Set(1u, sv[1]);
  return arr;
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (close(fd) != 0) ThrowErrno(info.Env(), errno, "close");
  return info.Env().Undefined();
}

// dup(fd) with close-on-exec: a second descriptor for the same open socket,
// so one thread can hand a connection to another and close its own handle
// without ending the connection.
Napi::Value DupFd(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (nfd < 0) ThrowErrno(info.Env(), errno, "dup");
  return Napi::Number::New(info.Env(), nfd);
}

struct DoItResult {
  int err;
};
void DeliverExit(Napi::Env env, Napi::Function cb, std::nullptr_t*, DoItResult* r);
using ExitFn = Napi::TypedThreadSafeFunction<std::nullptr_t, DoItResult, DeliverExit>;
void DeliverExit(Napi::Env env, Napi::Function cb, std::nullptr_t*, DoItResult* r) {
  if (env != nullptr && cb) cb.Call({Napi::Number::New(env, r->err)});
  delete r;
}

int Ioctl(int fd, unsigned long req, unsigned long arg) {
  for (;;) {
    if (ioctl(fd, req, arg) == 0) return 0;
    if (errno != EINTR) return errno;
  }
}

// nbdAttach(devicePath, socketFds[], blockSize, sizeBytes, flags, timeoutSec, onExit(errno))
// Configures the device and starts NBD_DO_IT on a native thread. The socket
// fds are handed to the kernel (which keeps its own reference) and closed here.
Napi::Value NbdAttach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dev = info[0].As<Napi::String>().Utf8Value();
  auto fdsArr = info[1].As<Napi::Array>();
  uint64_t bs = ToU64(info[2]);
  uint64_t size = ToU64(info[3]);
  uint64_t flags = ToU64(info[4]);
  uint64_t timeout = ToU64(info[5]);
  if (!info[6].IsFunction()) throw Napi::TypeError::New(env, "nbdAttach: onExit must be a function");
  if (bs == 0 || size % bs != 0) throw Napi::RangeError::New(env, "nbdAttach: size must be a multiple of the block size");
  std::vector<int> fds;
  for (uint32_t i = 0; i < fdsArr.Length(); i++) fds.push_back(fdsArr.Get(i).As<Napi::Number>().Int32Value());

  int fd = open(dev.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) ThrowErrno(env, errno, "open " + dev);
  int err = 0;
  std::string step;
  Ioctl(fd, NBD_CLEAR_SOCK, 0);  // a stale config from a crashed user
  if ((err = Ioctl(fd, NBD_SET_BLKSIZE, bs))) step = "NBD_SET_BLKSIZE";
  else if ((err = Ioctl(fd, NBD_SET_SIZE_BLOCKS, size / bs))) step = "NBD_SET_SIZE_BLOCKS";
  else if ((err = Ioctl(fd, NBD_SET_FLAGS, flags))) step = "NBD_SET_FLAGS";
  else if (timeout && (err = Ioctl(fd, NBD_SET_TIMEOUT, timeout))) step = "NBD_SET_TIMEOUT";
  for (size_t i = 0; !err && i < fds.size(); i++) {
    if ((err = Ioctl(fd, NBD_SET_SOCK, static_cast<unsigned long>(fds[i])))) step = "NBD_SET_SOCK";
  }
  if (err) {
    Ioctl(fd, NBD_CLEAR_SOCK, 0);
    close(fd);
    ThrowErrno(env, err, step + " on " + dev);
  }
  for (int s : fds) close(s);  // the kernel holds its own references now
  auto onExit = ExitFn::New(env, info[6].As<Napi::Function>(), "quicmap-nbd", 0, 1, nullptr);
  std::thread([fd, onExit]() mutable {
    int e = Ioctl(fd, NBD_DO_IT, 0);
    // Whatever ended it, leave the device free for the next user.
    Ioctl(fd, NBD_CLEAR_QUE, 0);
    Ioctl(fd, NBD_CLEAR_SOCK, 0);
    close(fd);
    onExit.BlockingCall(new DoItResult{e});
    onExit.Release();
  }).detach();
  return env.Undefined();
}

// nbdDisconnect(devicePath): ask the kernel to send NBD_CMD_DISC and end DO_IT.
Napi::Value NbdDisconnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dev = info[0].As<Napi::String>().Utf8Value();
  int fd = open(dev.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) ThrowErrno(env, errno, "open " + dev);
  int err = Ioctl(fd, NBD_DISCONNECT, 0);
  if (!err) Ioctl(fd, NBD_CLEAR_SOCK, 0);
  close(fd);
  if (err) ThrowErrno(env, err, "NBD_DISCONNECT on " + dev);
  return env.Undefined();
}

}  // namespace

void NbdInit(Napi::Env env, Napi::Object exports) {
  exports.Set("socketPair", Napi::Function::New(env, SocketPair, "socketPair"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));
  exports.Set("dupFd", Napi::Function::New(env, DupFd, "dupFd"));
  exports.Set("nbdAttach", Napi::Function::New(env, NbdAttach, "nbdAttach"));
  exports.Set("nbdDisconnect", Napi::Function::New(env, NbdDisconnect, "nbdDisconnect"));
  auto io = Napi::Object::New(env);
  io.Set("NBD_SET_SOCK", static_cast<double>(NBD_SET_SOCK));
  io.Set("NBD_SET_BLKSIZE", static_cast<double>(NBD_SET_BLKSIZE));
  io.Set("NBD_SET_SIZE", static_cast<double>(NBD_SET_SIZE));
  io.Set("NBD_DO_IT", static_cast<double>(NBD_DO_IT));
  io.Set("NBD_CLEAR_SOCK", static_cast<double>(NBD_CLEAR_SOCK));
  io.Set("NBD_CLEAR_QUE", static_cast<double>(NBD_CLEAR_QUE));
  io.Set("NBD_SET_SIZE_BLOCKS", static_cast<double>(NBD_SET_SIZE_BLOCKS));
  io.Set("NBD_DISCONNECT", static_cast<double>(NBD_DISCONNECT));
  io.Set("NBD_SET_TIMEOUT", static_cast<double>(NBD_SET_TIMEOUT));
  io.Set("NBD_SET_FLAGS", static_cast<double>(NBD_SET_FLAGS));
  exports.Set("nbdIoctls", io);
}

}  // namespace qm
