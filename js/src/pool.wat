;; Max pooling over squares of float16 attention rows, for js/src/fastpool.js. Values are float16 bit
;; patterns read as int16: non-negative weights order like their patterns, so maxima are
;; integer maxima (i16x8.max_s, 8 cells an instruction). Built by js/scripts/wasm.mjs.
;; All pointers are byte offsets into the exported memory.
(module
  (memory (export "memory") 1)

  ;; acc[i] = max(acc[i], src[i]) for i < n (int16)
  (func (export "vmax") (param $src i32) (param $acc i32) (param $n i32)
    (local $end i32)
    (local $a i32)
    (local $b i32)
    (local.set $end
      (i32.add (local.get $acc) (i32.shl (i32.and (local.get $n) (i32.const -8)) (i32.const 1))))
    (block $vdone
      (loop $vec
        (br_if $vdone (i32.ge_u (local.get $acc) (local.get $end)))
        (v128.store align=2 (local.get $acc)
          (i16x8.max_s (v128.load align=2 (local.get $acc)) (v128.load align=2 (local.get $src))))
        (local.set $acc (i32.add (local.get $acc) (i32.const 16)))
        (local.set $src (i32.add (local.get $src) (i32.const 16)))
        (br $vec)))
    (local.set $end
      (i32.add (local.get $end) (i32.shl (i32.and (local.get $n) (i32.const 7)) (i32.const 1))))
    (block $sdone
      (loop $tail
        (br_if $sdone (i32.ge_u (local.get $acc) (local.get $end)))
        (local.set $a (i32.load16_s (local.get $acc)))
        (local.set $b (i32.load16_s (local.get $src)))
        (i32.store16 (local.get $acc)
          (select (local.get $b) (local.get $a) (i32.gt_s (local.get $b) (local.get $a))))
        (local.set $acc (i32.add (local.get $acc) (i32.const 2)))
        (local.set $src (i32.add (local.get $src) (i32.const 2)))
        (br $tail))))

  ;; out[c] = lut[max(acc[c*side .. min(width, (c+1)*side))] & 0xffff] for every square of
  ;; the first `width` cells (lut: 65536 uint32 colours, out: uint32 pixels)
  (func (export "hfold") (param $acc i32) (param $width i32) (param $side i32) (param $lut i32) (param $out i32)
    (local $end i32)
    (local $stop i32)
    (local $m i32)
    (local $v i32)
    (local.set $end (i32.add (local.get $acc) (i32.shl (local.get $width) (i32.const 1))))
    (block $done
      (loop $pixel
        (br_if $done (i32.ge_u (local.get $acc) (local.get $end)))
        (local.set $stop (i32.add (local.get $acc) (i32.shl (local.get $side) (i32.const 1))))
        (if (i32.gt_u (local.get $stop) (local.get $end)) (then (local.set $stop (local.get $end))))
        (local.set $m (i32.load16_s (local.get $acc)))
        (local.set $acc (i32.add (local.get $acc) (i32.const 2)))
        (block $cdone
          (loop $cell
            (br_if $cdone (i32.ge_u (local.get $acc) (local.get $stop)))
            (local.set $v (i32.load16_s (local.get $acc)))
            (local.set $m (select (local.get $v) (local.get $m) (i32.gt_s (local.get $v) (local.get $m))))
            (local.set $acc (i32.add (local.get $acc) (i32.const 2)))
            (br $cell)))
        (i32.store (local.get $out)
          (i32.load (i32.add (local.get $lut) (i32.shl (i32.and (local.get $m) (i32.const 0xffff)) (i32.const 2)))))
        (local.set $out (i32.add (local.get $out) (i32.const 4)))
        (br $pixel))))

  ;; out[i] = lut[src[i]] for i < n (one cell a pixel)
  (func (export "colour") (param $src i32) (param $n i32) (param $lut i32) (param $out i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $src) (i32.shl (local.get $n) (i32.const 1))))
    (block $done
      (loop $cell
        (br_if $done (i32.ge_u (local.get $src) (local.get $end)))
        (i32.store (local.get $out)
          (i32.load (i32.add (local.get $lut) (i32.shl (i32.load16_u (local.get $src)) (i32.const 2)))))
        (local.set $src (i32.add (local.get $src) (i32.const 2)))
        (local.set $out (i32.add (local.get $out) (i32.const 4)))
        (br $cell)))))
