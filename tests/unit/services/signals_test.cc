#include "services/signals.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <future>

namespace sqa {
namespace {

TEST(ShutdownSignals, SigtermRunsCallbackOnce) {
  std::promise<int> got;
  auto s = ShutdownSignals::Install([&](int signo) { got.set_value(signo); });
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(absl::IsFailedPrecondition(ShutdownSignals::Install([](int) {}).status()));
  ASSERT_EQ(::raise(SIGTERM), 0);
  auto f = got.get_future();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(f.get(), SIGTERM);
  s->reset();  // restores handlers
  auto again = ShutdownSignals::Install([](int) {});
  EXPECT_TRUE(again.ok());
}

TEST(ShutdownSignals, TriggerAndCleanExitWithoutSignal) {
  std::promise<int> got;
  auto s = ShutdownSignals::Install([&](int signo) { got.set_value(signo); });
  ASSERT_TRUE(s.ok());
  (*s)->Trigger(SIGINT);
  EXPECT_EQ(got.get_future().get(), SIGINT);
  s->reset();
  auto quiet = ShutdownSignals::Install([](int) { ADD_FAILURE() << "no signal was sent"; });
  ASSERT_TRUE(quiet.ok());
  quiet->reset();  // destructor ends the watcher without running the callback
}

}  // namespace
}  // namespace sqa
