#ifndef BROKERKIT_CFUZZDRIVER_H
#define BROKERKIT_CFUZZDRIVER_H
#include <stddef.h>
#include <stdint.h>

/* libFuzzer's entry point for a program with a main of its own. It links only in a build
   with -sanitize=fuzzer (scripts/fuzz.sh); brokerkit-fuzz calls it only in that build. */
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
#endif
