//! Counted loops over run-time extents: header / body / exit blocks, with the
//! induction variable as the only `Variable` (accumulators are the caller's).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{Block, InstBuilder, Value, types};
use cranelift_frontend::{FunctionBuilder, Variable};

/// An open `for i in start..end` loop; the builder is positioned in its body.
pub struct Loop {
    header: Block,
    exit: Block,
    var: Variable,
    /// The induction variable's value in the body.
    pub index: Value,
    step: i64,
}

impl Loop {
    /// Opens the loop at the current position. `end` must be defined before it.
    pub fn open(b: &mut FunctionBuilder, start: Value, end: Value) -> Loop {
        Loop::open_step(b, start, end, 1)
    }

    /// `for i in (start..end).step_by(step)`, for `end - start` a multiple of `step`.
    pub fn open_step(b: &mut FunctionBuilder, start: Value, end: Value, step: i64) -> Loop {
        let var = b.declare_var(types::I64);
        b.def_var(var, start);
        let header = b.create_block();
        let body = b.create_block();
        let exit = b.create_block();
        b.ins().jump(header, &[]);
        b.switch_to_block(header);
        let index = b.use_var(var);
        let more = b.ins().icmp(IntCC::SignedLessThan, index, end);
        b.ins().brif(more, body, &[], exit, &[]);
        b.switch_to_block(body);
        b.seal_block(body);
        Loop {
            header,
            exit,
            var,
            index,
            step,
        }
    }

    /// Closes the loop (increment, back edge); the builder continues after it.
    pub fn close(self, b: &mut FunctionBuilder) {
        let next = b.ins().iadd_imm_s(self.index, self.step);
        b.def_var(self.var, next);
        b.ins().jump(self.header, &[]);
        b.seal_block(self.header);
        b.switch_to_block(self.exit);
        b.seal_block(self.exit);
    }
}
