// Sparse-file support for FileBackend. fallocate(2) runs on a worker
// (Napi::AsyncWorker): hole punching and range zeroing can take a while on
// large ranges and must not stall the JS thread. lseek(2) with
// SEEK_DATA/SEEK_HOLE is a quick metadata lookup and runs inline; it lets
// block status report a file's holes.
#include "common.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <unistd.h>

namespace qm {

namespace {

class FallocateWorker : public Napi::AsyncWorker {
 public:
  FallocateWorker(Napi::Env env, int fd, int mode, int64_t offset, int64_t length)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd), mode_(mode), offset_(offset), length_(length) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    int r;
    do {
      r = fallocate(fd_, mode_, offset_, length_);
    } while (r < 0 && errno == EINTR);
    err_ = r < 0 ? errno : 0;
  }

  void OnOK() override {
    // A worker thread being terminated still completes its queued work
    // (Node 24, during FreeEnvironment), but every call into its env fails;
    // node-addon-api throws for that, and the exception escaping here aborts
    // the process. Nobody can await this promise any more: drop the result.
    try {
      if (err_ != 0) deferred_.Reject(ErrnoError(Env(), err_, "fallocate").Value());
      else deferred_.Resolve(Env().Undefined());
    } catch (const Napi::Error&) {
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  int mode_;
  int64_t offset_;
  int64_t length_;
  int err_ = 0;
};

// fallocate(fd, mode, offset, length) -> Promise<void>; rejects with an
// errno-coded error (EOPNOTSUPP where the filesystem lacks the mode).
Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsNumber()) {
    throw Napi::TypeError::New(env, "fallocate(fd, mode, offset, length)");
  }
  auto* w = new FallocateWorker(env, info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int32Value(),
                                info[2].As<Napi::Number>().Int64Value(), info[3].As<Napi::Number>().Int64Value());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// lseek(fd, offset, whence) -> number; -1 for ENXIO (no data/hole at or
// after offset: past the end), otherwise throws an errno-coded error.
Napi::Value Lseek(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    throw Napi::TypeError::New(env, "lseek(fd, offset, whence)");
  }
  off_t r = lseek(info[0].As<Napi::Number>().Int32Value(), static_cast<off_t>(info[1].As<Napi::Number>().Int64Value()),
                  info[2].As<Napi::Number>().Int32Value());
  if (r < 0) {
    if (errno == ENXIO) return Napi::Number::New(env, -1);
    ThrowErrno(env, errno, "lseek");
  }
  return Napi::Number::New(env, static_cast<double>(r));
}

}  // namespace

void FallocateInit(Napi::Env env, Napi::Object exports) {
  exports.Set("lseek", Napi::Function::New(env, Lseek, "lseek"));
  Napi::Object w = Napi::Object::New(env);
  w.Set("SEEK_DATA", Napi::Number::New(env, SEEK_DATA));
  w.Set("SEEK_HOLE", Napi::Number::New(env, SEEK_HOLE));
  exports.Set("seekWhence", w);
  exports.Set("fallocate", Napi::Function::New(env, Fallocate, "fallocate"));
  Napi::Object c = Napi::Object::New(env);
  c.Set("FALLOC_FL_KEEP_SIZE", Napi::Number::New(env, FALLOC_FL_KEEP_SIZE));
  c.Set("FALLOC_FL_PUNCH_HOLE", Napi::Number::New(env, FALLOC_FL_PUNCH_HOLE));
  c.Set("FALLOC_FL_ZERO_RANGE", Napi::Number::New(env, FALLOC_FL_ZERO_RANGE));
  exports.Set("fallocateFlags", c);
}

}  // namespace qm
