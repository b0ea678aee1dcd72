" Vim syntax for fuse merge recipes (.fuse)
if exists("b:current_syntax")
  finish
endif

syntax keyword fuseStorage param fn
syntax keyword fuseKeyword import match
syntax keyword fuseConstant true false none
syntax keyword fuseType bf16 f16 f32
syntax keyword fuseBuiltinVar tensor layer depth
syntax match fuseComment "#.*$"
syntax region fuseString start=/"/ skip=/\\./ end=/"/
syntax match fuseNumber "\<\d\+\(\.\d*\)\=\([eE][+-]\=\d\+\)\=\>"
syntax match fuseFunction "\<\h\w*\>\ze\s*("
syntax match fuseNamedArg "\<\h\w*\>\ze\s*=[^=>]"
syntax match fuseOperator "=>\|\.\.\|[-+*/]"

highlight default link fuseStorage StorageClass
highlight default link fuseKeyword Keyword
highlight default link fuseConstant Constant
highlight default link fuseType Type
highlight default link fuseBuiltinVar Identifier
highlight default link fuseComment Comment
highlight default link fuseString String
highlight default link fuseNumber Number
highlight default link fuseFunction Function
highlight default link fuseNamedArg Special
highlight default link fuseOperator Operator

let b:current_syntax = "fuse"
