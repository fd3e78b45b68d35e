/* The scorer's post-matmul chain fused into one pass over each item (ralm.lookalike.scorer_kernel).

For one tile of m items the caller's matmul has written res (m*k, 2 nb), one row per
(item, slot): [2 q.c (nb) | beta e.c / |e| (nb)], nb the B users padded with zero columns
to a multiple of the lane width; the first nout (= B) columns are answered. Per item and user this computes, in
registers and L1 instead of one torch pass per step over the whole tile:

    u_a   = weight_a exp(2 sigmoid(2 q.c_a))   (= weight_a exp(1 + tanh(q.c_a)))
    num   = sum_a u_a (beta e.c_a / |e|)
    el    = sum_ab G_ab u_a u_b
    out[b * ld + i] = num / sqrt(max(el, tiny))

the same formulas as ralm.lookalike.scorer_chain._local_by_slots. The same file holds
stage 2's training form of the local cosine and its backward (train_fwd / train_bwd). Vectorised over the
users (B) with GCC vector extensions; two lane widths (8, and 16 where AVX-512 is there).
Compiled at first use with the host's C compiler (-O3 -march=native). */

#include <math.h>
#include <stdint.h>
#include <string.h>

#define CHAIN_CAT2(a, b) a##_##b
#define CHAIN_CAT(a, b) CHAIN_CAT2(a, b)

int ralm_chain_abi(void) { return 3; }

#define CHAIN_V 8
#define CHAIN_FN ralm_chain_v8
#include "chain_body.h"
#undef CHAIN_V
#undef CHAIN_FN

#if defined(__AVX512F__)
int ralm_chain_lanes(void) { return 16; }
#define CHAIN_V 16
#define CHAIN_FN ralm_chain_v16
#include "chain_body.h"
#undef CHAIN_V
#undef CHAIN_FN
#else
int ralm_chain_lanes(void) { return 8; }
#endif
