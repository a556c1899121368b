"""app.circuits: parsing, limits, counts shaping and every hostile program ending in our error."""

from __future__ import annotations

import pickle
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qiskit import QuantumCircuit, transpile
from qiskit_aer import AerSimulator

from app.circuits import (
    CircuitError,
    CircuitLimits,
    LimitExceeded,
    NoMeasurements,
    QasmSemanticError,
    QasmSyntaxError,
    SimulationFailed,
    UnsupportedProgram,
    estimate_cost,
    max_qubits_for_memory,
    parse_qasm,
    precheck,
    run,
    run_qasm,
    validate,
)

HEADER = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
BELL = (
    HEADER + "qubit[2] q;\nbit[2] c;\nh q[0];\ncx q[0], q[1];\n"
    "c[0] = measure q[0];\nc[1] = measure q[1];\n"
)
GHZ5 = HEADER + "qubit[5] q;\nbit[5] c;\nh q[0];\ncx q[0], q[1:4];\nc = measure q;\n"
LIMITS = CircuitLimits()


def gate_doubling_chain(levels: int) -> str:
    lines = [HEADER, "gate g0 a { x a; }"]
    lines += [f"gate g{i} a {{ g{i - 1} a; g{i - 1} a; }}" for i in range(1, levels + 1)]
    lines += ["qubit q;", "bit c;", f"g{levels} q;", "c = measure q;"]
    return "\n".join(lines)


def limit_of(source: str, shots: int = 8) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        run_qasm(source, shots, seed=1)
    return caught.value


# --- running circuits --------------------------------------------------------------------------


def test_bell_with_a_seed_gives_only_00_and_11_summing_to_the_shots() -> None:
    outcome = run_qasm(BELL, 1024, seed=11)
    assert set(outcome.counts) <= {"00", "11"}
    assert sum(outcome.counts.values()) == 1024
    assert (outcome.shots, outcome.num_qubits, outcome.num_clbits) == (1024, 2, 2)
    assert outcome.method in {"stabilizer", "statevector"}
    assert outcome.seed == 11


def test_ghz5_gives_only_all_zeros_and_all_ones() -> None:
    outcome = run_qasm(GHZ5, 500, seed=3)
    assert set(outcome.counts) <= {"00000", "11111"}
    assert sum(outcome.counts.values()) == 500


def test_the_same_seed_gives_identical_counts() -> None:
    program = HEADER + "qubit[3] q;\nbit[3] c;\nrx(0.7) q;\ncx q[0], q[2];\nc = measure q;\n"
    assert run_qasm(program, 2000, seed=42).counts == run_qasm(program, 2000, seed=42).counts


def test_a_run_without_a_seed_reports_the_seed_that_repeats_it() -> None:
    program = HEADER + "qubit[3] q;\nbit[3] c;\nrx(0.7) q;\nc = measure q;\n"
    first = run_qasm(program, 500)
    assert run_qasm(program, 500, seed=first.seed).counts == first.counts


def test_timings_are_reported_in_seconds() -> None:
    outcome = run_qasm(BELL, 10, seed=1)
    assert 0 < outcome.parse_s < 10 and 0 < outcome.transpile_s < 10
    assert 0 < outcome.simulation_s < 10 and 0 <= outcome.aer_time_s <= outcome.simulation_s


def test_count_keys_group_registers_like_qiskit_last_declared_first() -> None:
    program = (
        HEADER + "qubit[3] q;\nbit[2] c;\nbit[1] d;\nx q[0];\nx q[2];\n"
        "c[0] = measure q[0];\nc[1] = measure q[1];\nd[0] = measure q[2];\n"
    )
    circuit = parse_qasm(program)
    qiskit_counts = AerSimulator().run(transpile(circuit, AerSimulator()), shots=20).result()
    assert run_qasm(program, 20, seed=1).counts == {"1 01": 20} == qiskit_counts.get_counts()


def test_a_scalar_bit_gets_its_own_group_in_declaration_order() -> None:
    # Qiskit alone would drop a loose `bit b;` from the keys.
    program = (
        HEADER + "qubit[2] q;\nbit[2] c;\nbit b;\nx q[1];\nc = measure q;\nb = measure q[1];\n"
    )
    assert run_qasm(program, 10, seed=1).counts == {"1 10": 10}


def test_registers_the_importer_adds_for_conditions_stay_out_of_the_keys() -> None:
    program = (
        HEADER + "qubit[3] q;\nbit[3] c;\nx q[0];\nc = measure q;\n"
        "if (c[0:1] == 1) x q[2];\nc[2] = measure q[2];\n"
    )
    assert run_qasm(program, 10, seed=1).counts == {"101": 10}


def test_consecutive_if_blocks_run_despite_the_aer_truncation_bug() -> None:
    program = (
        HEADER + "qubit[3] q;\nbit[3] c;\nx q[1];\nc[1] = measure q[1];\n"
        "if (c[2]) { x q[1]; }\nif (c[1]) x q[0];\nc = measure q;\n"
    )
    assert run_qasm(program, 10, seed=1).counts == {"011": 10}


def test_a_for_loop_over_repeated_values_runs_each_value() -> None:
    # Aer rejects such a for_loop ("Duplicated mark destination"); the lowering unrolls it.
    program = HEADER + "qubit q;\nbit c;\nfor uint k in {1, 1} { x q; }\nc = measure q;\n"
    assert run_qasm(program, 16, seed=1).counts == {"0": 16}


def test_mid_circuit_measurement_makes_the_cost_count_every_shot() -> None:
    dynamic = parse_qasm(HEADER + "qubit[2] q;\nbit[2] c;\nc[0] = measure q[0];\nx q[0];\n"
                         "c[1] = measure q[0];\n")  # fmt: skip
    static = parse_qasm(BELL)
    assert estimate_cost(dynamic, 1000).shot_simulations == 1000
    assert estimate_cost(dynamic, 1000).dynamic
    assert estimate_cost(static, 1000).shot_simulations == 1
    assert estimate_cost(static, 1000).statevector_bytes == 16 * 4


def test_a_dynamic_20_qubit_circuit_with_many_shots_exceeds_max_work() -> None:
    program = (
        HEADER
        + "qubit[20] q;\nbit[20] c;\nh q;\nc[0] = measure q[0];\n"
        + "rx(0.1) q;\ncx q[0], q[1];\n" * 20
        + "c = measure q;\n"
    )
    error = limit_of(program, shots=1024)
    assert error.limit == "max_work"
    assert "1024 shots" in str(error)
    validate(parse_qasm(program), 1, LIMITS)  # one shot is affordable


def test_aer_reporting_insufficient_memory_becomes_simulation_failed() -> None:
    # 20 qubits need 16 MB; Aer answers success=False (no exception) when capped at 1 MB.
    circuit = parse_qasm(HEADER + "qubit[20] q;\nbit[20] c;\nrx(0.3) q;\nc = measure q;\n")
    with pytest.raises(SimulationFailed, match="Insufficient memory"):
        run(circuit, 10, method="statevector", max_memory_mb=1)


def test_an_unknown_aer_method_is_a_circuit_error() -> None:
    with pytest.raises(CircuitError, match="unknown Aer method"):
        run(parse_qasm(BELL), 10, method="quantum-magic")


# --- parse errors -------------------------------------------------------------------------------


def test_a_syntax_error_gives_its_line_and_column() -> None:
    with pytest.raises(QasmSyntaxError) as caught:
        parse_qasm("OPENQASM 3.0;\nqubit[2] q;\nh q[0;\n")
    assert (caught.value.line, caught.value.column) == (3, 6)
    assert "line 3, column 6" in str(caught.value)


def test_an_unknown_gate_is_named() -> None:
    with pytest.raises(QasmSemanticError, match="gate 'frobnicate' is not defined") as caught:
        parse_qasm(HEADER + "qubit q;\nbit c;\nfrobnicate q;\nc = measure q;\n")
    assert caught.value.line == 5


def test_a_missing_include_says_to_include_stdgates() -> None:
    with pytest.raises(QasmSemanticError, match=r'include "stdgates\.inc"'):
        parse_qasm("OPENQASM 3.0;\nqubit q;\nbit c;\nh q;\nc = measure q;\n")


def test_a_program_without_measurements_asks_for_one() -> None:
    with pytest.raises(NoMeasurements, match="c = measure q;"):
        parse_qasm(HEADER + "qubit[2] q;\nh q[0];\n")


def test_a_repeat_until_success_while_loop_runs() -> None:
    # Measure |+> until it reads 0: every shot ends with c = 0.
    program = (HEADER + "qubit q;\nbit c;\nh q;\nc = measure q;\n"
               "while (c) { reset q; h q; c = measure q; }\n")  # fmt: skip
    assert run_qasm(program, 64, seed=3).counts == {"0": 64}


def test_unbound_inputs_are_unsupported() -> None:
    with pytest.raises(UnsupportedProgram, match="input 'theta' has no value"):
        parse_qasm(HEADER + "input angle theta;\nqubit q;\nbit c;\nrx(theta) q;\nc = measure q;\n")


# --- limits -------------------------------------------------------------------------------------


def test_the_default_qubit_limit_is_what_4_gib_of_statevector_holds() -> None:
    assert max_qubits_for_memory(4 * 1024**3) == 28 == LIMITS.max_qubits
    assert max_qubits_for_memory(4 * 1024**3, concurrency=4) == 26


def test_a_60_qubit_register_exceeds_max_qubits() -> None:
    error = limit_of(HEADER + "qubit[60] q;\nbit[60] c;\nc = measure q;\n")
    assert (error.limit, error.value, error.maximum) == ("max_qubits", 60, 28)
    assert "program has 60 qubits; the limit is 28 (max_qubits)" in str(error)


def test_ten_million_qubits_are_rejected_by_the_text_precheck() -> None:
    started = time.perf_counter()
    with pytest.raises(LimitExceeded, match="max_qubits"):
        precheck("OPENQASM 3.0;\nqubit[10000000] q;\n", LIMITS)
    assert time.perf_counter() - started < 0.5  # the importer alone takes 8 s and 1.9 GB


def test_a_register_size_written_as_arithmetic_is_bounded_before_conversion() -> None:
    assert limit_of("OPENQASM 3.0;\nqubit[10000 * 1000] q;\n").limit == "max_qubits"


def test_a_far_hardware_qubit_exceeds_max_qubits() -> None:
    assert limit_of(HEADER + "bit c;\nx $10000000;\nc = measure $0;\n").limit == "max_qubits"


@pytest.mark.parametrize(("shots", "limit"), [(0, "min_shots"), (10**9, "max_shots")])
def test_shots_outside_the_range_exceed_a_limit(shots: int, limit: str) -> None:
    error = limit_of(BELL, shots=shots)
    assert (error.limit, error.value) == (limit, shots)


def test_a_10_mb_program_exceeds_max_program_bytes() -> None:
    error = limit_of("OPENQASM 3.0;\n" + "// padding\n" * 1_000_000)
    assert error.limit == "max_program_bytes"


def test_1000_nested_parentheses_exceed_the_nesting_limit() -> None:
    program = HEADER + "qubit q;\nbit c;\nrz(" + "(" * 1000 + "1" + ")" * 1000 + ") q;\n"
    assert limit_of(program).limit == "max_nesting_depth"


def test_50_nested_if_blocks_exceed_the_nesting_limit() -> None:
    program = HEADER + "qubit q;\nbit c;\nc = measure q;\n" + "if (c) { " * 50 + "x q;" + "}" * 50
    assert limit_of(program).limit == "max_nesting_depth"


def test_nesting_without_brackets_ends_in_a_limit_not_a_recursion_error() -> None:
    # No braces for the precheck to count: the parser's own RecursionError is mapped.
    program = HEADER + "qubit q;\nbit c;\nc = measure q;\n" + "if (c) " * 300 + "x q;\n"
    assert limit_of(program).limit == "max_nesting_depth"


def test_a_very_long_expression_ends_in_a_limit_not_a_recursion_error() -> None:
    program = HEADER + "qubit q;\nbit c;\nrz(" + "+".join(["1"] * 3000) + ") q;\nc = measure q;\n"
    assert limit_of(program).limit == "max_nesting_depth"


def test_nesting_at_the_limit_still_runs() -> None:
    program = HEADER + "qubit q;\nbit c;\nc = measure q;\n" + "if (c) { " * 31 + "x q;" + "}" * 31
    assert run_qasm(program + "\nc = measure q;\n", 10, seed=1).counts == {"0": 10}


def test_binary_garbage_is_a_syntax_error() -> None:
    with pytest.raises(QasmSyntaxError, match="not UTF-8"):
        parse_qasm(bytes(range(256)) * 4)
    with pytest.raises(QasmSyntaxError, match="U\\+0000"):
        parse_qasm("OPENQASM 3.0;\nqubit q;\x00\n")


def test_a_gate_doubling_chain_is_stopped_before_the_importer_expands_it() -> None:
    started = time.perf_counter()
    error = limit_of(gate_doubling_chain(20))
    assert error.limit == "max_operations"  # the lowering counts the full 2^20 expansion
    assert time.perf_counter() - started < 2  # 20 levels exhaust 8 GB in the importer


def test_a_huge_for_loop_exceeds_the_unrolled_loop_limit() -> None:
    program = HEADER + "qubit q;\nbit c;\nfor int i in [0:1000000] { x q[0]; }\nc = measure q;\n"
    error = limit_of(program)
    assert (error.limit, error.line) == ("max_unrolled_loop_operations", 5)


def test_an_empty_loop_with_a_huge_range_still_counts_its_iterations() -> None:
    program = HEADER + "qubit q;\nbit c;\nfor int i in [0:10000000000] { }\nc = measure q;\n"
    assert limit_of(program).limit == "max_unrolled_loop_operations"


def test_a_small_for_loop_runs() -> None:
    program = HEADER + "qubit q;\nbit c;\nfor int i in [0:2] { x q; }\nc = measure q;\n"
    assert run_qasm(program, 10, seed=1).counts == {"1": 10}


def test_pow_on_a_wide_gate_exceeds_max_unitary_qubits() -> None:
    names = ", ".join(f"a{i}" for i in range(10))
    qubits = ", ".join(f"q[{i}]" for i in range(10))
    program = (
        HEADER + f"gate wide {names} {{ x a0; }}\nqubit[10] q;\nbit[10] c;\n"
        f"pow(0.5) @ wide {qubits};\nc = measure q;\n"
    )
    with pytest.raises(UnsupportedProgram, match="10 qubits"):
        parse_qasm(program)


def test_pow_on_a_long_two_qubit_gate_is_cheap_and_bounded() -> None:
    body = " ".join(["cx a, b; rz(0.1) a;"] * 1500)
    program = (
        HEADER + f"gate long a, b {{ {body} }}\nqubit[2] q;\nbit[2] c;\n"
        "pow(0.5) @ long q[0], q[1];\nc = measure q;\n"
    )
    started = time.perf_counter()
    assert parse_qasm(program).num_qubits == 2  # a 4x4 matrix, whatever the body's length
    assert time.perf_counter() - started < 10


def test_declarations_inside_comments_and_strings_do_not_count() -> None:
    program = HEADER + "// qubit[100] big;\n/* qreg huge[99]; {{{{ */\nqubit q;\nbit c;\n"
    assert run_qasm(program + "x q;\nc = measure q;\n", 10, seed=1).counts == {"1": 10}


# --- errors as data -----------------------------------------------------------------------------


def test_errors_survive_pickling_with_their_fields() -> None:
    error = limit_of(HEADER + "qubit[60] q;\nbit[60] c;\nc = measure q;\n")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is LimitExceeded and str(copy) == str(error)
    assert (copy.limit, copy.value, copy.maximum, copy.line) == ("max_qubits", 60, 28, 3)


def test_an_error_as_data_names_its_kind_and_position() -> None:
    with pytest.raises(QasmSyntaxError) as caught:
        parse_qasm("OPENQASM 3.0;\nqubit[2] q;\nh q[0;\n")
    assert caught.value.to_dict() == {
        "kind": "syntax_error",
        "message": str(caught.value),
        "line": 3,
        "column": 6,
    }


def test_validate_checks_circuits_built_in_python_too() -> None:
    circuit = QuantumCircuit(2)
    circuit.h(0)
    with pytest.raises(NoMeasurements):
        validate(circuit, 10)


# --- properties ---------------------------------------------------------------------------------

_TOKENS = [
    "qubit[3] q;", "bit[3] c;", "q", "q[0]", "q[0:1]", "$0", "c", "c[1]", "{", "}", "(", ")",
    "[", "]", ";", ",", "h", "x", "cx", "rz(pi/2)", "measure", "c = measure q;", "reset q;",
    "if (c[0]) ", "else ", "for int i in [0:3] ", "while (c[0]) ", "gate g a { x a; }", "g q;",
    "ctrl @ ", "negctrl(2) @ ", "pow(2) @ ", "inv @ ", "let r = q;", "bit b;", "box ",
    "def f() {}", "gphase(0.1);", "barrier q;", "delay[10ns] q;", "0x7f", "99999999999999",
    "-", "+", "*", "/", "/*", "*/", "//", "\n", '"', "'", "input angle t;", "OPENQASM 3.0;",
    'include "stdgates.inc";', "qreg r[2];", "creg d[1];", "measure q -> c;", "\x00", "\ufeff",
]  # fmt: skip
_SEEDS = [BELL, GHZ5, gate_doubling_chain(3), HEADER + "qubit[2] q;\nbit[2] c;\nc = measure q;\n"]


@st.composite
def mutated_programs(draw: st.DrawFn) -> str:
    program = draw(st.sampled_from(_SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(program)))
        edit = draw(st.sampled_from(["insert", "delete", "duplicate"]))
        if edit == "insert":
            piece = draw(st.sampled_from(_TOKENS) | st.text(max_size=5))
            program = program[:at] + piece + program[at:]
        elif edit == "delete":
            program = program[:at] + program[at + draw(st.integers(1, 20)) :]
        else:
            program = program[:at] + program[at : at + draw(st.integers(1, 40))] * 3 + program[at:]
    return program


_STATEMENTS = [
    "h q[{i}];", "x q;", "cx q[{i}], q[{j}];", "rz({f}) q[{i}];", "u3({f}, 0.2, {f}) q[{i}];",
    "c[{i}] = measure q[{i}];", "c = measure q;", "measure q[{i}] -> c[{j}];", "reset q[{i}];",
    "barrier q;", "delay[100ns] q[{i}];", "gphase({f});", "swap q[{i}], q[{j}];",
    "ccx q[0], q[1], q[2];", "ctrl @ x q[{i}], q[{j}];", "negctrl @ h q[{i}], q[{j}];",
    "inv @ s q[{i}];", "pow({n}) @ x q[{i}];", "pow(0.5) @ sx q[{i}];",
    "ctrl(2) @ gg q[0], q[1], q[2], q[{j}];", "gg q[{i}], q[{j}];", "gg q, q;",
    "if (c[{i}]) {{ x q[{j}]; }}", "if (c == {n}) x q[{i}]; else h q[{j}];",
    "for int k in [0:{n}] {{ rx(0.1) q[{i}]; }}", "for uint k in {{1, {n}}} {{ h q; }}",
    "while (c[{i}]) {{ x q[{i}]; c[{i}] = measure q[{i}]; }}", "box {{ x q[{i}]; }}",
    "let a{n} = q[0:1];", "bit b{n} = measure q[{i}];", "qubit[{n}] r{n};", "bit[{n}] d{n};",
    "h q[3];",
]  # fmt: skip


@st.composite
def generated_programs(draw: st.DrawFn) -> str:
    """Mostly valid programs on qubit[3] q and bit[3] c."""
    lines = [HEADER, "gate gg a, b { cx a, b; h b; }", "qubit[3] q;", "bit[3] c;"]
    for _ in range(draw(st.integers(1, 12))):
        template = draw(st.sampled_from(_STATEMENTS))
        i = draw(st.integers(0, 2))
        j = (i + draw(st.integers(1, 2))) % 3
        n, f = draw(st.integers(0, 4)), draw(st.floats(-10, 10, allow_nan=False))
        lines.append(template.format(i=i, j=j, n=n, f=round(f, 3)))
    if draw(st.booleans()):
        lines.append("c = measure q;")
    return "\n".join(lines)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400) | st.binary(max_size=200) | mutated_programs() | generated_programs())
def test_any_input_either_runs_or_raises_a_circuit_error(source: str | bytes) -> None:
    try:
        outcome = run_qasm(source, 8, seed=1)
    except CircuitError:
        return
    assert sum(outcome.counts.values()) == 8
