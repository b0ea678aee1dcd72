autocmd BufRead,BufNewFile *.fuse setfiletype fuse
