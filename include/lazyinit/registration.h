// Connects lazyinit to the dispatcher and to torch's device machinery.
#pragma once

namespace lazyinit {

// Idempotent. Picks the dispatch key that "lazy" maps to in this torch,
// registers the recorder on it, and the device guard (and, on torch 2.x,
// the PrivateUse1 hooks). Throws if torch._lazy already owns the Lazy key.
void register_backend();

// Called from register_backend; each lives in its own file.
void register_device_guard();
void register_privateuse1_hooks();
void register_rng_hooks();

}  // namespace lazyinit
