// Exact k-nearest-neighbour selection on the CPU (OpenMP over rows).
#pragma once
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace pplr {

// The exact top-k of the given rows of x (n x d) against every row: the k
// smallest sq_distance (common.h) of each row by (distance, column), sorted.
// The same distances as the selections' re-rank, so exact copies tie here too.
void exact_rows_topk_cpu(const float* x, int64_t n, int64_t d, const int64_t* rows, int64_t r,
                         int64_t k, double* out_dist, int64_t* out_index);

// The streaming state both selections share: per row a min-heap of the k best
// low-precision scores seen so far and the columns that can still beat the
// exact k-th neighbour under the error bound (see candidate_floor).
//
// error_bound[i] bounds |score - exact <x_i, x_j>| for row i apart from
// the rounding of the score itself to its storage type (relative,
// output_roundoff: 2^-8 for bf16 scores, 0 for fp32 GEMM output).
class StreamingTopK {
  protected:
    StreamingTopK(int64_t rows, int64_t k, const double* error_bound, double output_roundoff);
    struct Row {
        std::vector<float> heap;                         // min-heap of the k best scores
        std::vector<std::pair<float, int32_t>> cand;     // (score, column)
        size_t pruned_size = 0;
        float floor = -INFINITY;
    };
    void offer(int64_t row, float score, int64_t column);
    int64_t k_;
    double roundoff_;
    std::vector<double> bound_;
    std::vector<Row> rows_;
};

// Exact top-k of every row of a symmetric similarity matrix delivered as
// low-precision (bf16 or fp32) row blocks [r0, r0 + rows) x [r0, n): each block
// serves its own rows and, transposed, the rows of the columns right of it,
// so the GEMM producing the blocks does half the work.
//
// Every row keeps the columns that could still beat the exact k-th neighbour
// as the threshold rises; finish() re-ranks the candidates with fp64 distances
// 2 - 2<x_i, x_j>, so the result is the exact top-k sorted by (distance,
// column). A row with more than `cap` candidates is flagged in
// `overflow` (output left unset) for the caller to finish from exact distances.
class SymmetricTopK : public StreamingTopK {
  public:
    SymmetricTopK(int64_t n, int64_t k, const double* error_bound, double output_roundoff);
    void consume(const uint16_t* scores_bf16, int64_t r0, int64_t rows);
    void consume(const float* scores, int64_t r0, int64_t rows);
    void finish(const float* x, int64_t d, int64_t cap, double* out_dist, int64_t* out_index,
                uint8_t* overflow);

    // Several ranks may each consume part of the upper triangle (their strips)
    // into their own selection; then the rank that finishes rows [a, b) collects
    // what the others saw of them. take_rows: every column of rows [a, b) that
    // can still reach the top-k, as CSR (ptr: b - a + 1 offsets) of (column,
    // score); the rows are released. give_rows offers such pairs to this
    // selection. finish_rows is finish() for rows [a, b) only. The result is the
    // exact top-k whichever rank consumed which strip: every floor is derived
    // from scores the row really has, so no true neighbour is ever dropped.
    void take_rows(int64_t a, int64_t b, std::vector<int64_t>& ptr, std::vector<int32_t>& col,
                   std::vector<float>& score);
    void give_rows(int64_t a, int64_t b, const int64_t* ptr, const int32_t* col,
                   const float* score);
    void finish_rows(int64_t a, int64_t b, const float* x, int64_t d, int64_t cap,
                     double* out_dist, int64_t* out_index, uint8_t* overflow);

  private:
    template <typename Score, typename ToFloat>
    void consume_block(const Score* scores, int64_t r0, int64_t rows, ToFloat to_float);
    int64_t n_;
};

// Exact top-k of the rows of one block against every row, the other blocks
// visiting one at a time (the ring of the distributed stage): rows are local
// (0 .. rows - 1), columns global. For each visiting block [c0, c0 + width):
// consume() its low-precision scores (any split of the block's rows), then
// rerank() computes the fp64 distance sq_distance(x_row, x_column) of every
// column of that block still above the row's floor — while its features are
// here — and merges them into the row's running exact top-k by (distance,
// column). The floor only rises, so every true neighbour is re-ranked when its
// block visits; finish() returns the exact top-k. There is no cap on a row's
// candidates (finish()'s fp64 GEMM fallback): every distance of a row comes
// from sq_distance, so exact copies of a row tie in every block.
class RingTopK : public StreamingTopK {
  public:
    RingTopK(int64_t rows, int64_t k, const double* error_bound, double output_roundoff);
    void consume(const uint16_t* scores_bf16, int64_t a, int64_t rows, int64_t c0, int64_t width);
    void consume(const float* scores, int64_t a, int64_t rows, int64_t c0, int64_t width);
    void rerank(const float* x_rows, const float* x_cols, int64_t d, int64_t c0);
    void finish(double* out_dist, int64_t* out_index);
    int64_t rows() const { return static_cast<int64_t>(rows_.size()); }
    int64_t k() const { return k_; }

  private:
    template <typename Score, typename ToFloat>
    void consume_block(const Score* scores, int64_t a, int64_t rows, int64_t c0, int64_t width,
                       ToFloat to_float);
    void merge(int64_t row, std::vector<std::pair<double, int64_t>>& entries);
    std::vector<std::vector<std::pair<double, int64_t>>> best_;   // running exact top-k
};

}  // namespace pplr
