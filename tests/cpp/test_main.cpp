#include <gtest/gtest.h>

#include <lazyinit/registration.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  lazyinit::register_backend();
  return RUN_ALL_TESTS();
}
