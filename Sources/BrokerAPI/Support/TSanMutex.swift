// Only in the ThreadSanitizer build (scripts/sanitize.sh defines BROKERKIT_TSAN).
//
// Synchronization's Mutex locks with futex system calls on Linux, which ThreadSanitizer does
// not see: every access to state behind a Mutex was reported as a race (84 reports in the
// memory suite, all inside withLock). In that build, this module-internal Mutex shadows the
// imported one (a module's own declarations win over imported ones) and locks with a pthread
// mutex, which ThreadSanitizer understands; everything outside the lock stays checked. The
// same file is linked into each module the TSan pass runs (BrokerConformance and the two test
// targets).
#if BROKERKIT_TSAN
import Glibc

struct Mutex<Value>: @unchecked Sendable {
    private final class Storage: @unchecked Sendable {
        let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        var value: Value
        init(_ value: Value) {
            self.value = value
            lock.initialize(to: pthread_mutex_t())
            pthread_mutex_init(lock, nil)
        }
        deinit {
            pthread_mutex_destroy(lock)
            lock.deallocate()
        }
    }

    private let storage: Storage

    init(_ value: Value) { storage = Storage(value) }

    func withLock<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result {
        pthread_mutex_lock(storage.lock)
        defer { pthread_mutex_unlock(storage.lock) }
        return try body(&storage.value)
    }
}
#endif
