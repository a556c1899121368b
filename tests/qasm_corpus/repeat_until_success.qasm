// Repeat-until-success (Nielsen & Chuang; the OpenQASM 3 paper's example): a while loop on a
// register filled by a subroutine, `while (int[2](flags) != 0) { flags = segment(...); }`.
// (The paper writes arccos(3 / 5); in OpenQASM 3 / 5 on integers is 0, so 3.0 / 5 is meant.)
//
// One segment: ancillas in |++>; ccx, s, ccx, z on psi applies S^dagger if the ancillas are not
// |11> and i*S if they are. After h on the ancillas, outcome 00 leaves psi multiplied by
//   (3 S^dagger + i S) / 4 = diag(3 + i, -(1 + 3i)) / 4,
// which is a phase gate P(pi + arccos(3/5)) up to a global phase, with probability
// |3 + i|^2 / 16 = 10/16 = 5/8; the outcomes 01, 10, 11 leave psi unchanged (the operator is a
// multiple of the identity), so the loop retries. The loop ends with flags = 00.
// psi = |+> becomes (|0> + e^{i(pi + arccos(3/5))}|1>)/sqrt(2); rz(pi - arccos(3/5)) adds
// pi - arccos(3/5) to the relative phase, 2*pi in total, so psi = |+> again and h gives |0>.
// The loop stops early (after 1,000 iterations) with probability (3/8)^1000, i.e. never.
// Keys are "result flags":
// expect: {"0 00": 1.0}
OPENQASM 3.0;
include "stdgates.inc";

def segment(qubit[2] anc, qubit psi) -> bit[2] {
    bit[2] b;
    reset anc;
    h anc;
    ccx anc[0], anc[1], psi;
    s psi;
    ccx anc[0], anc[1], psi;
    z psi;
    h anc;
    measure anc -> b;
    return b;
}

qubit input_qubit;
qubit[2] ancilla;
bit[2] flags = "11";
bit result;

reset input_qubit;
h input_qubit;
// braces are optional in this case
while (int[2](flags) != 0) {
    flags = segment(ancilla, input_qubit);
}
rz(pi - arccos(3.0 / 5)) input_qubit;
h input_qubit;
result = measure input_qubit;  // should get zero
