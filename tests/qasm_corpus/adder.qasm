// Cuccaro ripple-carry adder (the OpenQASM 3 paper's example) with inputs set by a loop over
// the bits of compile-time integers: `uint[4] a_in = 1;` and
// `for uint i in [0:3] { if (bool(a_in[i])) x a[i]; }`.
//
// a = 1 (0001) and b = 15 (1111). The MAJ ladder leaves the carries in a and the carry-out in
// cout; UMA restores a and writes the sum into b. a + b = 16 = 1 0000: b = 0000, cout = 1.
// ans[0:3] = b, ans[4] = cout, so ans = 10000 on every shot (the circuit is classical).
// expect: {"10000": 1.0}
OPENQASM 3.0;
include "stdgates.inc";

gate majority a, b, c {
    cx c, b;
    cx c, a;
    ccx a, b, c;
}

gate unmaj a, b, c {
    ccx a, b, c;
    cx c, a;
    cx a, b;
}

qubit[1] cin;
qubit[4] a;
qubit[4] b;
qubit[1] cout;
bit[5] ans;
uint[4] a_in = 1;   // 0001
uint[4] b_in = 15;  // 1111

reset cin;
reset a;
reset b;
reset cout;

for uint i in [0:3] {
    if (bool(a_in[i])) x a[i];
    if (bool(b_in[i])) x b[i];
}

majority cin[0], b[0], a[0];
for uint i in [0:2] { majority a[i], b[i + 1], a[i + 1]; }
cx a[3], cout[0];
for uint i in [2:-1:0] { unmaj a[i], b[i + 1], a[i + 1]; }
unmaj cin[0], b[0], a[0];

measure b[0:3] -> ans[0:3];
measure cout[0] -> ans[4];
