/* The anthropic response parsers on raw bytes (see llm_wire_fuzz.h). */
#include "llm_wire_fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_wire(&nx_anthropic_wire, data, size);
}
