#include "services/port_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <thread>

namespace sqa {
namespace {

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/" + name + "." + std::to_string(::getpid());
}

TEST(PortFile, WriteThenRead) {
  const std::string p = TempPath("port");
  ASSERT_TRUE(WritePortFile(p, 40123).ok());
  std::ifstream in(p);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "40123\n");
  auto port = ReadPortFile(p);
  ASSERT_TRUE(port.ok());
  EXPECT_EQ(*port, 40123);
  std::remove(p.c_str());
}

TEST(PortFile, MissingAndGarbage) {
  const std::string p = TempPath("garbage");
  EXPECT_TRUE(absl::IsNotFound(ReadPortFile(p).status()));
  std::ofstream(p) << "hello";
  EXPECT_TRUE(absl::IsInvalidArgument(ReadPortFile(p).status()));
  std::ofstream(p) << "70000\n";
  EXPECT_TRUE(absl::IsInvalidArgument(ReadPortFile(p).status()));
  std::remove(p.c_str());
}

TEST(PortFile, WaitSeesLateFileAndTimesOut) {
  const std::string p = TempPath("late");
  std::thread t([&] {
    absl::SleepFor(absl::Milliseconds(100));
    ASSERT_TRUE(WritePortFile(p, 5555).ok());
  });
  auto port = WaitForPortFile(p, absl::Seconds(10));
  t.join();
  ASSERT_TRUE(port.ok()) << port.status();
  EXPECT_EQ(*port, 5555);
  std::remove(p.c_str());
  EXPECT_TRUE(absl::IsDeadlineExceeded(WaitForPortFile(p, absl::Milliseconds(50)).status()));
}

TEST(PortFile, UnwritableDirectory) {
  EXPECT_FALSE(WritePortFile("/nonexistent-dir/x.port", 1).ok());
}

}  // namespace
}  // namespace sqa
