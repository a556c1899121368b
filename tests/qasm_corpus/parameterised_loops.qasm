// Gate angles computed in a loop from the loop variable, with constants and math built-ins.
//
// ry(2 * arcsin(sqrt(p))) on |0> gives 1 with probability sin(arcsin(sqrt(p)))^2 = p. The loop
// sets p = (k + 1) / 4 on q[k], so P(q0 = 1) = 1/4, P(q1 = 1) = 1/2, P(q2 = 1) = 3/4,
// independently (product state). The second loop applies rz(k * pi / 3) to each qubit, which
// changes only phases. P(c2 c1 c0) is the product, e.g. P(000) = 3/4 * 1/2 * 1/4 = 3/32:
// expect: {"000": 0.09375, "001": 0.03125, "010": 0.09375, "011": 0.03125, "100": 0.28125, "101": 0.09375, "110": 0.28125, "111": 0.09375}
OPENQASM 3.0;
include "stdgates.inc";

const int n = 3;
qubit[n] q;
bit[n] c;

for int k in [0:n - 1] {
    float[64] p = (k + 1) / 4.0;
    ry(2 * arcsin(sqrt(p))) q[k];
}
for int k in {0, 1, 2} {
    rz(k * pi / 3) q[k];
}
c = measure q;
