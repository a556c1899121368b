// A 4-qubit quantum Fourier transform built by nested loops with angles pi / 2^(i - j), then its
// inverse built the same way in reverse order with negated angles: the round trip is the
// identity, so the input value comes back on every shot.
//
// The input is value = 11 = 1011, written with `if (bool(value[i])) x r[i];`.
// d = measure r = 1011 (d[0] is the rightmost bit).
// expect: {"1011": 1.0}
OPENQASM 3.0;
include "stdgates.inc";

qubit[4] r;
bit[4] d;
uint[4] value = 11;

for uint i in [0:3] {
    if (bool(value[i])) x r[i];
}
for int i in [3:-1:0] {
    h r[i];
    for int j in [i - 1:-1:0] {
        cp(pi / 2 ** (i - j)) r[j], r[i];
    }
}
for int i in [0:3] {
    for int j in [0:i - 1] {
        cp(-pi / 2 ** (i - j)) r[j], r[i];
    }
    h r[i];
}
d = measure r;
