// Gate modifiers on standard and user gates: ctrl @, negctrl @, ctrl(2) @, inv @, pow(k) @, and
// gphase, on basis states, so every step can be followed by hand.
//
// start q = 0000 (q[3] q[2] q[1] q[0])
// x q[0]                               -> q0 = 1
// ctrl @ flip q[0], q[1]               q0 = 1 so flip q1 -> q1 = 1
// negctrl @ flip q[2], q[3]            q2 = 0 so flip q3 -> q3 = 1
// ctrl(2) @ x q[0], q[1], q[2]         q0 = q1 = 1 so flip q2 -> q2 = 1
// inv @ twice q[3]                     inverse of x;x is the identity
// pow(3) @ flip q[1]                   x^3 = x -> q1 = 0
// pow(2) @ s q[0]                      s^2 = z: a phase on |1>, no bit change
// ctrl @ negctrl @ flip q[0], q[1], q[3]   q0 = 1 and q1 = 0 so flip q3 -> q3 = 0
// ctrl @ gphase(pi) q[2]               a z on q2: phase only
// inv @ ctrl @ rx(pi) q[2], q[1]       q2 = 1: rx(-pi) = i x up to phase -> q1 = 1
// final q = 0111 on every shot.
// expect: {"0111": 1.0}
OPENQASM 3.0;
include "stdgates.inc";

gate flip a { x a; }
gate twice a { flip a; flip a; }

qubit[4] q;
bit[4] c;

x q[0];
ctrl @ flip q[0], q[1];
negctrl @ flip q[2], q[3];
ctrl(2) @ x q[0], q[1], q[2];
inv @ twice q[3];
pow(3) @ flip q[1];
pow(2) @ s q[0];
ctrl @ negctrl @ flip q[0], q[1], q[3];
ctrl @ gphase(pi) q[2];
inv @ ctrl @ rx(pi) q[2], q[1];
c = measure q;
