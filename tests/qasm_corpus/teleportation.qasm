// Teleportation, textbook form: `if (c0 == 1) z q[2];` corrections on single measured bits.
//
// q[0] holds |psi> = ry(2*pi/3)|0> = cos(pi/3)|0> + sin(pi/3)|1>. After the Bell pair on
// q[1], q[2] and the Bell-basis rotation (cx q[0], q[1]; h q[0]) the state is
//   1/2 * sum over m0, m1 of |m0 m1> (x) X^m1 Z^m0 |psi>,
// so (c0, c1) are uniform and independent (1/4 each), and after "if c1: x" and "if c0: z"
// q[2] is |psi> whatever they were. Measuring it gives 1 with probability
// sin(pi/3)^2 = 3/4, independently of c0 and c1.
//
// Counts keys are "result c1 c0" (registers, last declared first; with a bit[] register
// declared, each single bit is its own field):
//   P(1 m1 m0) = 3/4 * 1/4 = 3/16,  P(0 m1 m0) = 1/4 * 1/4 = 1/16.
// expect: {"1 0 0": 0.1875, "1 0 1": 0.1875, "1 1 0": 0.1875, "1 1 1": 0.1875, "0 0 0": 0.0625, "0 0 1": 0.0625, "0 1 0": 0.0625, "0 1 1": 0.0625}
OPENQASM 3.0;
include "stdgates.inc";

qubit[3] q;
bit c0;
bit c1;
bit[1] result;

ry(2 * pi / 3) q[0];
h q[1];
cx q[1], q[2];
cx q[0], q[1];
h q[0];
c0 = measure q[0];
c1 = measure q[1];
if (c1 == 1) x q[2];
if (c0 == 1) z q[2];
result[0] = measure q[2];
