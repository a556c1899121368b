// Corrections conditioned on a whole measured register: `int[2](c) == 3`, `c == 1`, with and
// without braces, an else branch, and a condition on two bits joined with &&.
//
// h on both q qubits, then c = measure q: c is uniform over 00, 01, 10, 11 (1/4 each).
// The corrections copy c into tgt with its bits swapped:
//   c = 00 (0): nothing                       -> tgt = 00
//   c = 01 (1): x tgt[1]                      -> tgt = 10
//   c = 10 (2): x tgt[0] (from the && test)   -> tgt = 01
//   c = 11 (3): x tgt[0]; x tgt[1]            -> tgt = 11
// The z tgt[0] in the else branch (c != 3) only changes a phase, not the measured bits.
// out = measure tgt. Keys are "out c":
// expect: {"00 00": 0.25, "10 01": 0.25, "01 10": 0.25, "11 11": 0.25}
OPENQASM 3.0;
include "stdgates.inc";

qubit[2] q;
qubit[2] tgt;
bit[2] c;
bit[2] out;

h q;
c = measure q;

if (int[2](c) == 3) {
    x tgt[0];
    x tgt[1];
} else {
    z tgt[0];
}
if (c == 1) x tgt[1];
if (c[1] == 1 && c[0] == 0) x tgt[0];

out = measure tgt;
