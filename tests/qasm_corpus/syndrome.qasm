// Three-qubit bit-flip code: a subroutine measures the syndrome into the caller's register and
// another subroutine applies the correction it names; a random error is injected first.
//
// data = |111> (logical 1). Two coins in |+> give flip, uniform over 0..3 (1/4 each): 1, 2, 3
// put an x error on data[0], data[1], data[2]; 0 leaves data alone. The syndrome bits are
// s[0] = d0 xor d1 and s[1] = d1 xor d2, so
//   flip 0 -> s = 00 (0)   flip 1 (d0) -> s = 01 (1)   flip 2 (d1) -> s = 11 (3)
//   flip 3 (d2) -> s = 10 (2)
// and correct() flips exactly the qubit that was hit: out = 111 on every shot.
// Keys are "out syn flip":
// expect: {"111 00 00": 0.25, "111 01 01": 0.25, "111 11 10": 0.25, "111 10 11": 0.25}
OPENQASM 3.0;
include "stdgates.inc";

def syndrome(qubit[3] d, qubit[2] a) -> bit[2] {
    bit[2] s;
    reset a;
    cx d[0], a[0];
    cx d[1], a[0];
    cx d[1], a[1];
    cx d[2], a[1];
    s[0] = measure a[0];
    s[1] = measure a[1];
    return s;
}

def correct(qubit[3] d, bit[2] s) {
    if (s == 1) x d[0];
    if (s == 3) x d[1];
    if (s == 2) x d[2];
}

qubit[3] data;
qubit[2] anc;
qubit[2] coins;
bit[2] flip;
bit[2] syn;
bit[3] out;

x data;
h coins;
flip = measure coins;
switch (flip) {
    case 1 { x data[0]; }
    case 2 { x data[1]; }
    case 3 { x data[2]; }
    default { }
}
syn = syndrome(data, anc);
correct(data, syn);
out = measure data;
