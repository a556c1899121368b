// Repeat-until-success as a bounded for loop with a `break` on a measured bit (the break is
// decided at run time inside a loop unrolled before the run).
//
// Each iteration measures a fresh |+>: 0 (probability 1/2) breaks out, 1 flips `target` and
// goes on. With k ones before the first zero (probability 2^-(k+1), k = 0..9), target is
// flipped k times and c = 0. With ten ones (probability 2^-10) the loop runs out: ten flips,
// target = 0, c = 1.
//   P(r = 1, c = 0) = sum over odd k < 10 of 2^-(k+1) = (1/3)(1 - 2^-10) = 0.3330078125
//   P(r = 0, c = 0) = sum over even k < 10 of 2^-(k+1) = (2/3)(1 - 2^-10) = 0.666015625
//   P(r = 0, c = 1) = 2^-10 = 0.0009765625
// Keys are "r c":
// expect: {"1 0": 0.3330078125, "0 0": 0.666015625, "0 1": 0.0009765625}
OPENQASM 3.0;
include "stdgates.inc";

qubit coin;
qubit target;
bit c;
bit[1] r;

for int i in [0:9] {
    reset coin;
    h coin;
    c = measure coin;
    if (c == 0) break;
    x target;
}
r[0] = measure target;
