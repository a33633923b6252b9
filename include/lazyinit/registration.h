// Connects lazyinit to the dispatcher and to torch's device machinery.
#pragma once

namespace lazyinit {

// Idempotent. Registers the recorder on the Lazy dispatch key (the key
// "lazy" parses to), the device guard and the random-factory hooks. Throws
// if torch._lazy's TorchScript backend already owns the Lazy key.
void register_backend();

// Called from register_backend; each lives in its own file.
void register_device_guard();
void register_rng_hooks();

}  // namespace lazyinit
