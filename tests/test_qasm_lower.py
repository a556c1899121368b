"""app.qasm.lower_to_circuit: real OpenQASM 3 programs lowered to circuits that Aer runs.

Every simulation is seeded. Programs with one possible outcome are checked exactly; the others
against the distribution worked out by hand in the corpus file, with a total-variation-distance
bound (4,000 shots: the distance of a sample that size from its distribution stays well under
0.05).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import qiskit_qasm3_import
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qiskit import QuantumCircuit, transpile
from qiskit.transpiler import PassManager
from qiskit.transpiler.passes import RemoveResetInZeroState, UnrollForLoops
from qiskit_aer import AerSimulator

from app.qasm import (
    CircuitError,
    LimitExceeded,
    QasmSemanticError,
    QasmSyntaxError,
    UnsupportedProgram,
    lower_to_circuit,
)

CORPUS = Path(__file__).parent / "qasm_corpus"
HEADER = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
SHOTS = 4000
TVD_BOUND = 0.05
SIM = AerSimulator()


def counts_of(circuit: QuantumCircuit, shots: int = SHOTS, seed: int = 7) -> dict[str, int]:
    compiled = transpile(circuit, SIM, seed_transpiler=seed)
    result = SIM.run(compiled, shots=shots, seed_simulator=seed).result()
    return dict(result.get_counts())


def tvd(counts: dict[str, int], expected: dict[str, float]) -> float:
    total = sum(counts.values())
    keys = set(counts) | set(expected)
    return 0.5 * sum(abs(counts.get(k, 0) / total - expected.get(k, 0.0)) for k in keys)


def expected_of(source: str) -> dict[str, float]:
    line = next(x for x in source.splitlines() if x.startswith("// expect:"))
    expected: dict[str, float] = json.loads(line.removeprefix("// expect:"))
    assert abs(sum(expected.values()) - 1) < 1e-9
    return expected


def run(source: str, shots: int = 200, **limits: Any) -> dict[str, int]:
    return counts_of(lower_to_circuit(source, **limits), shots=shots)


# -- the corpus: programs written for the issue, distributions worked out by hand -----------------
@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.qasm")), ids=lambda p: p.stem)
def test_corpus_program_gives_its_hand_worked_distribution(path: Path) -> None:
    source = path.read_text()
    expected = expected_of(source)
    if len(expected) == 1:
        assert run(source) == {next(iter(expected)): 200}
    else:
        counts = counts_of(lower_to_circuit(source))
        assert set(counts) <= set(expected)
        assert tvd(counts, expected) < TVD_BOUND, counts


# -- what the importer accepts gives the same counts ----------------------------------------------
IMPORTER_ACCEPTS = {
    "bell": "qubit[2] q; bit[2] c; h q[0]; cx q[0], q[1]; c = measure q;",
    "single_bits": "qubit[3] q; bit a; bit b; bit d; h q; a = measure q[0]; b = measure q[1];"
    " measure q[2] -> d;",
    "if_on_bit": "qubit[3] q; bit[3] c; h q[0]; h q[1]; measure q[0] -> c[0];"
    " measure q[1] -> c[1]; if (c[0]) { x q[2]; }"
    " if (c[1] == false) { h q[2]; } else { ry(0.4) q[2]; } measure q[2] -> c[2];",
    "if_on_register": "qubit[4] q; bit[2] c; bit[2] d; h q[0]; h q[1]; c = measure q[0:1];"
    " if (c == 3) { x q[2]; } if (c == 1) { rx(0.7) q[3]; } d = measure q[2:3];",
    "while_on_bit": "qubit[2] q; bit[2] c; h q[0]; measure q[0] -> c[0];"
    " while (c[0]) { reset q[0]; h q[0]; x q[1]; measure q[0] -> c[0]; }"
    " measure q[1] -> c[1];",
    "user_gates": "gate rot(a, b) x, y { ry(a) x; cx x, y; rz(b / 2) y; ry(-a / 3) y; }"
    " qubit[3] q; bit[3] c; rot(0.5, 0.25) q[0], q[1]; rot(1.5, -0.5) q[1], q[2];"
    " h q[2]; c = measure q;",
    "modifiers": "gate g(t) a, b { h a; crx(t) a, b; } qubit[4] q; bit[4] c; h q[0]; h q[1];"
    " ctrl @ ry(0.9) q[0], q[2]; negctrl @ h q[1], q[3]; inv @ g(0.7) q[2], q[3];"
    " ctrl @ g(1.3) q[0], q[1], q[2]; pow(2) @ sx q[1]; pow(0.5) @ x q[0];"
    " ctrl(2) @ x q[0], q[1], q[3]; negctrl @ ctrl @ rz(0.3) q[0], q[1], q[2]; c = measure q;",
    "phase_and_u": "qubit[2] q; bit[2] c; U(0.3, 0.2, 0.1) q[0]; gphase(0.5);"
    " ctrl @ gphase(0.4) q[0]; h q[1]; ctrl @ U(1.0, 0.5, 0.25) q[1], q[0]; u1(0.2) q[0];"
    " u2(0.1, 0.3) q[1]; u3(0.4, 0.5, 0.6) q[0]; cu(0.1, 0.2, 0.3, 0.4) q[0], q[1]; id q[1];"
    " c = measure q;",
    "reset_and_barrier": "qubit[3] q; bit[3] c; reset q; h q; barrier q; c[0] = measure q[0];"
    " reset q[0]; barrier; h q[0]; cswap q[0], q[1], q[2]; c = measure q;",
    "qreg_creg": "qreg q[3]; creg c[3]; h q[0]; cx q[0], q[1]; measure q[0] -> c[0];"
    " measure q[1] -> c[1]; if (c == 3) x q[2]; measure q[2] -> c[2];",
    "single_qubits": "qubit a; qubit b; bit[2] c; h a; cx a, b; swap a, b; c[0] = measure a;"
    " c[1] = measure b;",
    "broadcast": "qubit[3] q; qubit[3] r; bit[6] c; h q; cx q, r; rz(0.3) r; cz q[0], r;"
    " c[0:2] = measure q; c[3:5] = measure r;",
    "for_with_angles": "qubit[2] q; bit[2] c; h q;"
    " for int i in {1, 3, 5} { crz(pi / i) q[0], q[1]; rx(i * 0.1) q[1]; } c = measure q;",
    "nested_if_and_while": "qubit[3] q; bit[3] c; h q[0]; h q[1]; measure q[0] -> c[0];"
    " measure q[1] -> c[1]; if (c[0]) { if (c[1]) { x q[2]; } }"
    " while (c[1]) { h q[1]; measure q[1] -> c[1]; } measure q[2] -> c[2];",
    "qubit_alias": "qubit[4] q; bit[4] c; let pair = q[1:2]; h pair; cx pair[0], q[3];"
    " c = measure q;",
}


@pytest.mark.parametrize("name", sorted(IMPORTER_ACCEPTS))
def test_program_the_importer_accepts_gives_identical_counts(name: str) -> None:
    """Same seed, same counts, against the importer's circuit. That circuit is first given two
    standard Qiskit passes that do not change what it computes: UnrollForLoops (the importer
    keeps a for_loop op, which makes Aer simulate shot by shot, so its random stream differs
    from a sampled run) and RemoveResetInZeroState (the lowering drops resets of fresh qubits)."""
    source = HEADER + IMPORTER_ACCEPTS[name]
    imported = qiskit_qasm3_import.parse(source)
    imported = PassManager([UnrollForLoops(), RemoveResetInZeroState()]).run(imported)
    lowered = lower_to_circuit(source)
    assert counts_of(lowered, shots=2000, seed=11) == counts_of(imported, shots=2000, seed=11)


# -- constructs beyond the importer, each with one possible outcome ------------------------------
DETERMINISTIC = {
    "const_def_and_casts": (
        "const int n = 3; def parity(bit[3] b) -> bit { return b[0] ^ b[1] ^ b[2]; }"
        " def rot(qubit x, float t) { ry(t) x; }"
        " qubit[4] q; bit[3] c; bit par; x q[0]; x q[2]; c = measure q[0:n - 1];"
        " par = parity(c); rot(q[3], pi); if (par) x q[3]; par = measure q[3];",
        "1 101",
    ),
    "bit_operations": (
        'qubit[4] q; bit[4] c; bit[4] d; x q[0]; x q[2]; c = measure q; d = c ^ "0011";'
        " d[3] = c[0] & c[2]; c = c << 1;",
        "1110 1010",
    ),
    "arrays_and_bit_access": (
        "array[int[8], 4] sel = {1, 0, 1, 1}; const uint n = sizeof(sel); qubit[4] q; bit[4] c;"
        " for uint i in [0:n - 1] { if (sel[i] == 1) x q[i]; } bit[4] mask = int[4](11);"
        " c = measure q; if (c == mask) x q[1]; c[1] = measure q[1];",
        "1011 1101",
    ),
    "while_known_before_the_run": (
        "qubit[4] q; bit[4] c; int i = 0; while (i < 4) { if (i % 2 == 0) x q[i]; i += 1; }"
        " c = measure q;",
        "0101",
    ),
    "continue_on_measured_bit": (
        "qubit[3] q; bit c; bit[3] r; for int i in [0:2] { reset q[0]; x q[0];"
        " c = measure q[0]; if (c) continue; x q[1]; } x q[2]; r = measure q;",
        "101 1",
    ),
    "bool_from_measurement": (
        "qubit[2] q; bit[2] c; bool ok = false; x q[0]; c[0] = measure q[0]; ok = c[0] == 1;"
        " if (ok && !(c[1] == 1)) x q[1]; c[1] = measure q[1];",
        "11",
    ),
    "switch_known_before_the_run": (
        "const int k = 2; qubit q; bit r; switch (k + 1) { case 0 { } case 3 { x q; }"
        " default { } } r = measure q;",
        "1",
    ),
    "bit_alias_and_slices": (
        "qubit[4] q; bit[4] c; x q[1]; x q[3]; let hi = c[2:3]; hi = measure q[2:3];"
        " let lo = c[0] ++ c[1]; lo = measure q[0:1];",
        "1010",
    ),
    "measure_without_target": ("qubit[2] q; x q[1]; measure q;", "10"),
    "physical_qubits": ("bit[2] c; x $1; c[0] = measure $0; c[1] = measure $1;", "10"),
    "store_only_branch_not_taken": (
        # Aer 0.18 runs a store in a branch that touches no qubit even when it is not taken;
        # the lowering anchors such branches to a qubit.
        "qubit q; bit[2] c; c[0] = measure q; if (c[0]) { c[1] = 1; }",
        "00",
    ),
    "return_of_measurement_into_caller_bits": (
        "def m(qubit a) -> bit { return measure a; } qubit[2] q; bit[2] c; x q[1];"
        " c[0] = m(q[0]); c[1] = m(q[1]);",
        "10",
    ),
    "runtime_while_with_compile_time_start": (
        "qubit q; qubit tq; bit c = 1; bit[1] r; while (c) { reset q; x tq; c = measure q; }"
        " r[0] = measure tq;",
        "1 0",
    ),
}


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_construct_runs_with_its_only_outcome(name: str) -> None:
    source, outcome = DETERMINISTIC[name]
    assert run(HEADER + source) == {outcome: 200}


EQUIVALENT = {
    "ctrl_of_gate_with_gphase_is_z_on_control": (
        "qubit[2] q; gate g a { gphase(pi); } ctrl @ g q[0], q[1];",
        "qubit[2] q; z q[0];",
    ),
    "ctrl_gphase_is_phase_on_control": (
        "qubit[2] q; ctrl @ gphase(0.7) q[0];",
        "qubit[2] q; p(0.7) q[0];",
    ),
    "negctrl_2": (
        "qubit[3] q; negctrl(2) @ x q[0], q[1], q[2];",
        "qubit[3] q; x q[0]; x q[1]; ccx q[0], q[1], q[2]; x q[0]; x q[1];",
    ),
    "ctrl_2_negctrl": (
        "qubit[4] q; ctrl(2) @ negctrl @ x q[0], q[1], q[2], q[3];",
        "qubit[4] q; x q[2]; ctrl(3) @ x q[0], q[1], q[2], q[3]; x q[2];",
    ),
    "half_power_of_user_x": ("qubit q; gate myx a { x a; } pow(0.5) @ myx q;", "qubit q; sx q;"),
    "inverse_of_parameterised_user_gate": (
        "qubit[2] q; gate g(t) a, b { rx(t) a; cx a, b; rz(2 * t) b; } inv @ g(0.3) q[0], q[1];",
        "qubit[2] q; rz(-0.6) q[1]; cx q[0], q[1]; rx(-0.3) q[0];",
    ),
    "inverse_of_controlled_user_gate": (
        "qubit[3] q; gate g(t) a, b { rx(t) a; cx a, b; } inv @ ctrl @ g(0.3) q[2], q[0], q[1];",
        "qubit[3] q; ctrl @ cx q[2], q[0], q[1]; ctrl @ rx(-0.3) q[2], q[0];",
    ),
    "controlled_inverse_keeps_the_definitions_phase": (
        "qubit[2] q; gate g a { gphase(0.5); x a; } ctrl @ inv @ g q[0], q[1];",
        "qubit[2] q; p(-0.5) q[0]; cx q[0], q[1];",
    ),
}


@pytest.mark.parametrize("name", sorted(EQUIVALENT))
def test_modified_gate_has_the_expected_unitary(name: str) -> None:
    from qiskit.quantum_info import Operator

    def unitary(body: str) -> Operator:
        circuit = lower_to_circuit(HEADER + body)
        return Operator(transpile(circuit, basis_gates=["u", "cx"], optimization_level=0))

    lowered, expected = EQUIVALENT[name]
    assert unitary(lowered).equiv(unitary(expected))


def test_openqasm2_program_with_qelib1_runs() -> None:
    source = (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\ncreg c[2];\nU(pi, 0, pi) q[0];\n'
        "CX q[0], q[1];\ncu1(pi) q[0], q[1];\nmeasure q -> c;\nif (c == 3) x q[0];\n"
        "measure q[0] -> c[0];\n"
    )
    assert run(source) == {"10": 200}


def test_inputs_are_taken_from_the_inputs_argument() -> None:
    source = HEADER + "input float theta; qubit q; bit c; rx(theta) q; c = measure q;"
    assert run(source, inputs={"theta": 3.141592653589793}) == {"1": 200}


# -- run-time while loops are bounded ------------------------------------------------------------
@pytest.mark.parametrize(("limit", "outcome"), [(5, "1 1"), (6, "0 1")])
def test_while_that_never_ends_stops_after_max_while_iterations(limit: int, outcome: str) -> None:
    # q stays |1>, so c stays 1 and the loop would run forever: it runs `limit` times, each
    # flipping tq once, then the shot goes on.
    source = HEADER + (
        "qubit q; qubit tq; bit[1] c; bit[1] r; x q; c[0] = measure q;"
        " while (c[0]) { x tq; c[0] = measure q; } r[0] = measure tq;"
    )
    assert run(source, max_while_iterations=limit) == {outcome: 200}


def test_while_that_never_ends_finishes_quickly_with_the_default_bound() -> None:
    source = HEADER + ("qubit q; bit c; x q; c = measure q; while (c) { c = measure q; }")
    start = time.perf_counter()
    assert run(source, shots=100) == {"1": 100}
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize(("limit", "outcome"), [(3, "0 1 1"), (4, "1 1 1")])
def test_while_body_sees_values_its_earlier_iterations_changed(limit: int, outcome: str) -> None:
    # f is 0 on entry and set later in the body: from the second iteration on, `if (f)` holds.
    # With `limit` iterations tq is flipped limit - 1 times.
    source = HEADER + (
        "qubit q; qubit tq; bit[1] c; bit f; bit[1] r; x q; c[0] = measure q;"
        " while (c[0]) { if (f) x tq; f = 1; c[0] = measure q; } r[0] = measure tq;"
    )
    assert run(source, max_while_iterations=limit) == {outcome: 200}


@pytest.mark.parametrize(("limit", "outcome"), [(4, "0 1 1 1"), (5, "1 1 1 1")])
def test_while_body_state_settles_over_several_rounds(limit: int, outcome: str) -> None:
    # g only changes once f is known to change: two rounds of widening before the body is stable.
    source = HEADER + (
        "qubit q; qubit tq; bit[1] c; bit f; bit g; bit[1] r; x q; c[0] = measure q;"
        " while (c[0]) { if (g) x tq; if (f) g = 1; f = 1; c[0] = measure q; }"
        " r[0] = measure tq;"
    )
    assert run(source, max_while_iterations=limit) == {outcome: 200}


@pytest.mark.parametrize(
    ("op", "number"), [(op, k) for op in ("<", "<=", ">", ">=") for k in range(5)]
)
def test_ordering_on_a_partly_measured_register(op: str, number: int) -> None:
    # c[2] is never measured (known 0), so this is not a whole-register comparison.
    source = HEADER + (
        "qubit[3] q; bit[3] c; bit[1] r; h q[0]; h q[1]; c[0] = measure q[0];"
        f" c[1] = measure q[1]; if (c {op} {number}) x q[2]; r[0] = measure q[2];"
    )
    for key in run(source):
        flag, value = key.split()
        assert (flag == "1") == {
            "<": int(value, 2) < number,
            "<=": int(value, 2) <= number,
            ">": int(value, 2) > number,
            ">=": int(value, 2) >= number,
        }[op]


def _exported_circuits() -> dict[str, QuantumCircuit]:
    from qiskit import ClassicalRegister, QuantumRegister
    from qiskit.circuit.classical import expr

    out = {}
    q, c = QuantumRegister(3, "q"), ClassicalRegister(3, "c")
    flow = QuantumCircuit(q, c)
    flow.h(0)
    flow.measure(0, 0)
    with flow.if_test((c[0], 1)) as else_:
        flow.x(1)
    with else_:
        flow.h(2)
    with flow.while_loop((c[0], 1)):
        flow.h(0)
        flow.measure(0, 0)
    with flow.for_loop(range(3)) as i:
        flow.rx(i * 0.3, 2)
    with flow.switch(c) as case:  # exported as `int switch_dummy = c; switch (switch_dummy)`
        with case(0):
            flow.x(2)
        with case(1, 2):
            flow.z(2)
        with case(case.DEFAULT):
            flow.y(2)
    flow.measure([1, 2], [1, 2])
    out["control_flow"] = flow
    conditions = QuantumCircuit(q, c)
    conditions.h([0, 1])
    conditions.measure([0, 1], [0, 1])
    with conditions.if_test(expr.logic_and(expr.logic_not(c[0]), c[1])):
        conditions.x(2)
    with conditions.if_test(expr.equal(expr.bit_and(c, 3), 3)):
        conditions.x(2)
    with conditions.if_test(expr.less(c, 2)):
        conditions.h(2)
    conditions.measure(2, 2)
    out["expression_conditions"] = conditions
    gate = QuantumCircuit(2, name="mine")
    gate.h(0)
    gate.cx(0, 1)
    gate.rz(0.7, 1)
    custom = QuantumCircuit(3)
    custom.append(gate.to_gate(), [0, 1])
    custom.append(gate.to_gate().control(1), [2, 0, 1])
    custom.append(gate.to_gate().inverse(), [1, 2])
    custom.measure_all()
    out["custom_gates"] = custom
    return out


@pytest.mark.parametrize("name", ["control_flow", "expression_conditions", "custom_gates"])
def test_program_exported_by_qiskit_gives_the_original_circuits_counts(name: str) -> None:
    import qiskit.qasm3

    original = _exported_circuits()[name]
    lowered = lower_to_circuit(qiskit.qasm3.dumps(original))
    assert counts_of(lowered, shots=1000) == counts_of(original, shots=1000)


# -- the counts show the declared bits, never scratch bits ---------------------------------------
def test_single_bits_alone_form_one_bitstring_as_with_the_importer() -> None:
    circuit = lower_to_circuit(
        HEADER + "qubit[2] q; bit a; bit b; x q[1]; a = measure q[0]; b = measure q[1];"
    )
    assert not circuit.cregs
    assert counts_of(circuit, shots=50) == {"10": 50}


def test_single_bits_next_to_a_register_each_get_a_field() -> None:
    source = HEADER + "qubit[2] q; bit a; bit[2] r; x q[0]; a = measure q[0]; r = measure q;"
    assert run(source) == {"01 1": 200}


def test_subroutine_result_is_measured_straight_into_the_callers_register() -> None:
    source = HEADER + (
        "def twice(qubit[2] a) -> bit[2] { bit[2] b; b = measure a; return b; }"
        " qubit[2] q; bit[2] c; x q[0]; c = twice(q);"
    )
    circuit = lower_to_circuit(source)
    # No copy through scratch bits: a store would stop Aer from sampling the shots.
    assert "store" not in circuit.count_ops()
    assert counts_of(circuit, shots=50) == {"01": 50}


def test_scratch_bits_stay_out_of_the_counts() -> None:
    source = HEADER + (
        "def flag(qubit a) -> bit { bit b; b = measure a; if (b) { b = 0; } else { b = 1; }"
        " return b; } qubit[2] q; bit[1] c; h q[0]; c[0] = flag(q[0]); measure q[1];"
    )
    counts = run(source, shots=400)
    assert set(counts) == {"0", "1"}
    assert sum(counts.values()) == 400


# -- unsupported constructs name themselves and their line ---------------------------------------
UNSUPPORTED = {
    "extern": ("extern get_angle(int) -> float;", "extern 'get_angle'"),
    "defcal": ("defcal x $0 { }", "defcal"),
    "cal": ("cal { }", "cal block"),
    "measured_value_as_angle": (
        "qubit q; bit c; c = measure q;\nrx(c * pi) q;",
        "parameter of gate 'rx'",
    ),
    "measured_value_cast_to_float": (
        "qubit q; bit c; c = measure q;\nrx(float(c)) q;",
        "parameter of gate 'rx'",
    ),
    "duration": ("duration d = 100ns;", "duration"),
    "stretch": ("stretch s;", "stretch"),
    "durationof": ("qubit q; float t = durationof({x q;});", "duration"),
    "input_without_value": ("input float theta;", "input 'theta'"),
    "int_output": ("output int x;", "output 'x'"),
    "int_changed_by_measured_branch": (
        "qubit q; bit c; int n = 0; c = measure q;\nif (c) { n = 1; }",
        "'n'",
    ),
    "other_include": ('include "mygates.inc";', "mygates.inc"),
    "return_under_measured_condition": (
        "qubit q; bit c;\ndef f(qubit a) -> bit { bit b = measure a; if (b) { return b; }"
        " return b; } c = f(q);",
        "'return'",
    ),
    "end_under_measured_condition": ("qubit q; bit c; c = measure q;\nif (c) { end; }", "end"),
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_construct_is_named_with_its_line(name: str) -> None:
    body, construct = UNSUPPORTED[name]
    source = HEADER + body
    expected_line = HEADER.count("\n") + body.count("\n") + 1  # the construct is on the last line
    with pytest.raises(UnsupportedProgram) as info:
        lower_to_circuit(source)
    assert construct in str(info.value)
    assert info.value.line == expected_line
    assert f"line {expected_line}" in str(info.value)


@pytest.mark.parametrize(
    ("body", "message", "line", "column"),
    [
        ("qubit q;\nx q\nh q;", "unexpected 'h'", 5, 1),
        ("qubit q;\nh q", "unexpected end of program", 4, 4),
    ],
)
def test_syntax_error_has_line_and_column(body: str, message: str, line: int, column: int) -> None:
    with pytest.raises(QasmSyntaxError) as info:
        lower_to_circuit(HEADER + body)
    assert message in str(info.value)
    assert (info.value.line, info.value.column) == (line, column)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("qubit q;\nrx(theta) q;", "'theta' is not defined"),
        ("qubit[2] q;\ncx q[0], q[0];", "same qubit twice"),
        ("qubit[2] q;\nx q[2];", "out of range"),
        ("qubit q;\nrx(1 / 0) q;", "division by zero"),
        ("qubit q;\nqubit t;", "it is a standard gate"),
    ],
)
def test_semantic_error_has_its_line(body: str, message: str) -> None:
    with pytest.raises(QasmSemanticError) as info:
        lower_to_circuit(HEADER + body)
    assert message in str(info.value)
    assert info.value.line == 4


def test_gate_missing_without_include_says_so() -> None:
    with pytest.raises(QasmSemanticError, match="missing include"):
        lower_to_circuit("OPENQASM 3.0;\nqubit q;\nh q;")


@pytest.mark.parametrize("source", ["", "\x89PNG\r\n\x1a\n\x00", "OPENQASM 3.0;\x00\nqubit q;"])
def test_empty_or_binary_input_is_a_syntax_error(source: str) -> None:
    with pytest.raises(QasmSyntaxError):
        lower_to_circuit(source)


# -- limits end quickly, in LimitExceeded --------------------------------------------------------
DOUBLING = (
    "qubit q;\ngate g0 a { x a; }\n"
    + "".join(f"gate g{i} a {{ g{i - 1} a; g{i - 1} a; }}\n" for i in range(1, 21))
    + "g20 q;\n"
)

LIMITS = {
    "huge_for_loop": ("qubit q; for int i in [0:1000000] { x q; }", "max_loop_iterations"),
    "nested_for_loops": (
        "qubit q; for int i in [0:999] { for int j in [0:999] { x q; } }",
        "max_loop_iterations",
    ),
    "gate_chain_doubling_20_levels": (DOUBLING, "max_operations"),
    "pow_of_a_gate": ("qubit q; gate g a { x a; } pow(100000000) @ g q;", "max_operations"),
    "fifty_nested_ifs": (
        "qubit q; bit c; " + "if (c) {" * 50 + "x q;" + "}" * 50,
        "max_nesting_depth",
    ),
    "thousand_nested_parentheses": (
        "qubit q; rz(" + "(" * 1000 + "1" + ")" * 1000 + ") q;",
        "max_nesting_depth",
    ),
    "long_operator_chain": ("qubit q; rz(" + "+".join(["1"] * 500) + ") q;", "max_nesting_depth"),
    "ten_million_qubits": ("qubit[10000000] q;", "max_qubits"),
    "ten_million_bits": ("bit[10000000] c;", "max_clbits"),
    "huge_physical_qubit": ("x $100000000;", "max_qubits"),
    "endless_recursion": ("qubit q; def f(qubit a) { x a; f(a); } f(q);", "max_call_depth"),
    "endless_compile_time_while": ("int i = 0; while (true) { i += 1; }", "max_loop_iterations"),
}


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_limit_is_hit_quickly(name: str) -> None:
    body, limit = LIMITS[name]
    start = time.perf_counter()
    with pytest.raises(LimitExceeded) as info:
        lower_to_circuit(HEADER + body)
    assert time.perf_counter() - start < 3
    assert info.value.limit == limit
    assert info.value.value > info.value.maximum


def test_doubling_chain_under_the_limit_is_counted_in_full() -> None:
    circuit = lower_to_circuit(HEADER + DOUBLING.replace("g20 q;", "g10 q;"))
    assert circuit.size() == 1
    assert circuit.metadata["lowered_operations"] == 2**10


def test_operations_limit_counts_unrolled_loops() -> None:
    with pytest.raises(LimitExceeded) as info:
        lower_to_circuit(HEADER + "qubit q; for int i in [0:99] { x q; }", max_operations=50)
    assert info.value.limit == "max_operations"


# -- measured inputs and literal inputs give the same result -------------------------------------
_CLASSICAL_OPS = [
    "a = a ^ b;",
    "a = ~a;",
    "b = a & b;",
    "b = b | a;",
    "a = a << 1;",
    "b = b >> 1;",
    "u = a[0] && !b[1];",
    "v = a == b;",
    "v = u ^ v;",
    "if (a[1]) { b[0] = !b[0]; } else { a[2] = u; }",
    "if (a > 3) b = a;",
    "if (b <= 2) { u = 1; }",
    "if (a == 5 || v) { a[0] = 0; }",
    "b[1:2] = a[0:1];",
    "switch (a) { case 1, 2 { b = ~b; } case 7 { u = v; } default { v = !v; } }",
    "for int k in [0:2] { if (a[k]) b[k] = u; }",
    "for int k in [0:2] { if (b[k]) break; a[k] = !a[k]; }",
    "for int k in [0:2] { if (!a[k]) continue; v = !v; }",
    "while (a != 0) { a = a >> 1; v = !v; }",
    'while (u) { u = 0; b = b ^ "011"; }',
    "{ bool w = a[2] || b[0]; if (w) { u = !u; } }",
    "if (u) { if (v) { a = b; } else { b = a; } }",
]


def _classical_program(inputs: tuple[int, int, int, int], ops: list[str], measured: bool) -> str:
    a, b, u, v = inputs
    lines = ["qubit[8] pq;", "bit[1] m;", "bit[3] a;", "bit[3] b;", "bit u;", "bit v;"]
    if measured:
        bits = [(a >> i) & 1 for i in range(3)] + [(b >> i) & 1 for i in range(3)] + [u, v]
        lines += [f"x pq[{i}];" for i, bit in enumerate(bits) if bit]
        lines += ["a = measure pq[0:2];", "b = measure pq[3:5];", "u = measure pq[6];"]
        lines += ["v = measure pq[7];", "reset pq;"]
    else:
        lines += [f'a = "{a:03b}";', f'b = "{b:03b}";', f"u = {u};", f"v = {v};"]
    # Measure a |0> qubit so that Aer reports counts even when everything else is classical.
    return HEADER + "\n".join([*lines, *ops, "m[0] = measure pq[0];"])


@settings(max_examples=25, deadline=None, database=None, derandomize=True)
@given(
    st.tuples(st.integers(0, 7), st.integers(0, 7), st.integers(0, 1), st.integers(0, 1)),
    st.lists(st.sampled_from(_CLASSICAL_OPS), min_size=1, max_size=6),
)
def test_classical_code_on_measured_bits_agrees_with_the_same_code_on_literals(
    inputs: tuple[int, int, int, int], ops: list[str]
) -> None:
    """The same program with its inputs as literals (folded before the run) and as measured
    basis states (Qiskit control flow, stores and expressions on Aer): one and the same result."""
    folded = run(_classical_program(inputs, ops, measured=False), shots=8)
    at_run_time = run(_classical_program(inputs, ops, measured=True), shots=8)
    assert len(at_run_time) == 1
    assert at_run_time == folded


# -- any input: a circuit or one of our errors -----------------------------------------------------
_FRAGMENTS = [
    "qubit[2] q;",
    "bit[2] c;",
    "bit b;",
    "int i = 1;",
    "h q[0];",
    "cx q[0], q[1];",
    "c = measure q;",
    "b = measure q[1];",
    "if (c == 1) x q[0];",
    "if (b) { h q[1]; } else { }",
    "while (b) { b = measure q[0]; }",
    "for int k in [0:2] { rz(k * pi) q[1]; }",
    "gate g(a) x { rx(a) x; }",
    "g(0.3) q[0];",
    "def f(qubit x) -> bit { return measure x; }",
    "b = f(q[0]);",
    "reset q;",
    "barrier q;",
    "c[0] = c[1] ^ b;",
    "i += 2;",
    "break;",
    "}",
    "{",
    "(",
    "x q[5];",
    "let a = q[0:1];",
    "ctrl @ x q[0], q[1];",
    "inv @ g(1) q[1];",
    "switch (i) { case 1 { x q[0]; } default { } }",
    "end;",
    "return;",
    "q",
    "1 +",
    "@",
    ";",
]


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=12), st.text(max_size=20))
def test_any_program_gives_a_circuit_or_a_circuit_error(parts: list[str], noise: str) -> None:
    source = HEADER + " ".join(parts) + noise
    try:
        circuit = lower_to_circuit(source, max_operations=10_000, max_loop_iterations=1_000)
    except CircuitError:
        return
    assert isinstance(circuit, QuantumCircuit)
